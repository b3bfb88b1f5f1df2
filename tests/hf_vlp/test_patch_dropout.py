"""FLIP random patch dropout: fewer image tokens in training, the full image at eval, nothing changed at 0."""

from __future__ import annotations

import pytest
import torch

from hf_vlp import DualEncoderConfig, DualEncoderModel
from tests.trainers.helpers import TEXT, VISION, small_model


VIT = {**VISION, "model_type": "vit", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
SWIN = {
    "model_type": "swin",
    "image_size": 32,
    "patch_size": 4,
    "embed_dim": 16,
    "depths": [1, 1],
    "num_heads": [2, 2],
    "window_size": 2,
}


def inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 2000, (batch, 6), generator=generator),
        "attention_mask": torch.ones(batch, 6, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator),
    }


def config_with(vision: dict, rate: float) -> DualEncoderConfig:
    return DualEncoderConfig(
        text_config=dict(TEXT), vision_config=dict(vision), projection_dim=16, vision_patch_dropout=rate
    )


def model_with(vision: dict, rate: float, seed: int = 0) -> DualEncoderModel:
    torch.manual_seed(seed)
    return DualEncoderModel(config_with(vision, rate))


@pytest.mark.parametrize("vision", [VISION, VIT], ids=["clip_vision", "vit"])
def test_training_keeps_cls_and_about_half_of_the_patches_random_per_image(vision):
    model = model_with(vision, 0.5).train()
    batch = inputs()
    tokens = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
    assert tokens.shape[1] == 1 + 8  # 16 patches of 8px in 32px: CLS + 8 kept
    model.eval()
    full = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
    assert full.shape[1] == 1 + 16
    # Which patches are kept differs between images and between calls (a fresh draw every forward).
    hook = next(iter(_embeddings(model)._forward_hooks.values()))
    embedded = _embeddings(model).train()
    torch.manual_seed(1)
    first = hook(embedded, (), _numbered(batch=3, tokens=17))
    second = hook(embedded, (), _numbered(batch=3, tokens=17))
    assert (first[:, 0, 0] == 0).all()  # CLS always first and kept
    assert not torch.equal(first[0, 1:, 0], first[1, 1:, 0]) or not torch.equal(first[1, 1:, 0], first[2, 1:, 0])
    assert not torch.equal(first, second)


def _embeddings(model: DualEncoderModel) -> torch.nn.Module:
    return model.vision_model.embeddings  # both ViTModel and (transformers 5) CLIPVisionModel


def _numbered(batch: int, tokens: int) -> torch.Tensor:
    """Tokens whose first feature is their position, to see which ones a hook kept."""
    return torch.arange(tokens, dtype=torch.float).view(1, tokens, 1).expand(batch, tokens, 4).clone()


@pytest.mark.parametrize("vision", [VISION, VIT], ids=["clip_vision", "vit"])
def test_eval_mode_uses_the_full_image_and_equals_a_model_without_dropout(vision):
    dropped, plain = model_with(vision, 0.5), model_with(vision, 0.0)
    plain.load_state_dict(dropped.state_dict())
    batch = inputs()
    with torch.no_grad():
        a = dropped.eval()(**batch)
        b = plain.eval()(**batch)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, rtol=0, atol=0)


def test_rate_zero_changes_nothing_in_training():
    with_hook, without = model_with(VISION, 0.5), small_model(seed=0)
    without.load_state_dict(with_hook.state_dict())
    with_hook.config.vision_patch_dropout = 0.0  # the hook reads the rate at every call: an exact no-op at 0
    batch = inputs()
    a = with_hook.train()(**batch, return_loss=True)
    b = without.train()(**batch, return_loss=True)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(a.logits_per_image, b.logits_per_image)


def test_training_with_dropout_back_propagates_into_the_kept_patches():
    model = model_with(VISION, 0.5).train()
    model(**inputs(), return_loss=True).loss.backward()
    assert model.vision_model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_a_tower_it_cannot_apply_to_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="vision_patch_dropout cannot apply.*hierarchical.*vision_patch_dropout=0"):
        DualEncoderModel(config_with(SWIN, 0.5))
    DualEncoderModel(config_with(SWIN, 0.0))  # without dropout the same tower is fine
    with pytest.raises(ValueError, match=r"vision_patch_dropout must be in \[0, 1\)"):
        config_with(VISION, 1.0)
