"""A fresh model starts where CLIP-style training can leave the ln(batch) plateau: pinned initialisation statistics."""

from __future__ import annotations

import math

import pytest
import torch

from hf_vlp import DualEncoderConfig, DualEncoderModel, FusionEncoderConfig, FusionEncoderForPreTraining
from tests.trainers.helpers import TEXT, VISION


WIDE_TEXT = {**TEXT, "hidden_size": 96, "intermediate_size": 192}
WIDE_VISION = {**VISION, "hidden_size": 96, "intermediate_size": 192}
VIT = {
    "model_type": "vit",
    "hidden_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 192,
    "image_size": 32,
    "patch_size": 8,
}


def _dual(vision: dict, **overrides) -> DualEncoderModel:
    torch.manual_seed(0)
    config = DualEncoderConfig(text_config=dict(WIDE_TEXT), vision_config=dict(vision), projection_dim=48, **overrides)
    return DualEncoderModel(config).eval()


def _assert_clip_projection(projection: torch.nn.Linear) -> None:
    """CLIP's scheme: std = in_features ** -0.5 (0.102 at width 96), far from a generic layer's 0.02."""
    expected = projection.in_features**-0.5
    assert projection.weight.std().item() == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("vision", [WIDE_VISION, VIT], ids=["clip_vision", "vit"])
def test_dual_encoder_projections_follow_clip_init(vision):
    model = _dual(vision)
    _assert_clip_projection(model.text_projection)
    _assert_clip_projection(model.visual_projection)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-3)


def test_fusion_encoder_projections_follow_clip_init_and_momentum_copies_match():
    torch.manual_seed(0)
    config = FusionEncoderConfig(
        text_config=dict(WIDE_TEXT), vision_config=dict(WIDE_VISION), projection_dim=48, num_fusion_layers=1
    )
    model = FusionEncoderForPreTraining(config)
    _assert_clip_projection(model.text_projection)
    _assert_clip_projection(model.visual_projection)
    assert torch.equal(model.text_projection.weight, model.text_projection_m.weight)


def test_scaled_logits_start_with_clip_spread(tiny_batch, small_processor):
    """At init the scaled logits of a batch must vary (CLIP-level spread), not sit at one value."""
    model = _dual(WIDE_VISION)
    with torch.no_grad():
        logits = model(**tiny_batch).logits_per_image
    assert logits.std().item() > 0.05
