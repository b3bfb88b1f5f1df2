"""Regression tests of the model changes the benchmarks led to (see benchmarks/README.md, "What was fixed").

1. `DualEncoderModel.forward` runs the vision tower before the text tower, so that backward differentiates the
   vision tower last, after the text activations are freed (peak memory of a train step = ChineseCLIPModel's).
2. `image_text_contrastive_loss` without image ids uses class-index cross-entropy: same value and gradient as the
   soft form against one-hot targets, without the dense target matrix.
3. `DualEncoderModel.contrastive_loss` on one process scores the batch once, not once per direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_vlp import DualEncoderConfig, DualEncoderModel
from hf_vlp.models.contrastive import contrastive_targets, image_text_contrastive_loss, soft_cross_entropy


def test_forward_runs_the_vision_tower_before_the_text_tower(tiny_dual_config, tiny_batch):
    model = DualEncoderModel(tiny_dual_config)
    order = []
    model.vision_model.register_forward_pre_hook(lambda *_: order.append("vision"))
    model.text_model.register_forward_pre_hook(lambda *_: order.append("text"))
    model(**tiny_batch, return_loss=True).loss.backward()
    assert order == ["vision", "text"]


def test_hard_label_loss_equals_soft_loss_with_one_hot_targets():
    torch.manual_seed(0)
    num_local, num_all, offset = 5, 12, 4  # this rank's pairs sit at 4..8 of the gathered batch
    logits_per_image = torch.randn(num_local, num_all, requires_grad=True)
    logits_per_text = torch.randn(num_local, num_all, requires_grad=True)
    loss = image_text_contrastive_loss(logits_per_image, logits_per_text, offset)
    loss.backward()
    image_ref = logits_per_image.detach().clone().requires_grad_()
    text_ref = logits_per_text.detach().clone().requires_grad_()
    targets = contrastive_targets(num_local, num_all, offset)
    expected = (soft_cross_entropy(image_ref, targets) + soft_cross_entropy(text_ref, targets)) / 2
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits_per_image.grad, image_ref.grad)
    torch.testing.assert_close(logits_per_text.grad, text_ref.grad)


def test_loss_with_image_ids_still_spreads_targets_over_shared_images():
    logits = torch.zeros(3, 3)
    logits[0, 1] = 5.0  # pair 0's image is pair 1's too: scoring caption 1 high is right, not a mistake
    ids = torch.tensor([7, 7, 8])
    with_ids = image_text_contrastive_loss(logits, logits.t(), 0, ids, ids)
    without = image_text_contrastive_loss(logits, logits.t(), 0)
    assert with_ids < without


def test_one_process_contrastive_loss_scores_the_batch_once(tiny_dual_config, tiny_batch):
    config = DualEncoderConfig(
        text_config=tiny_dual_config.text_config,
        vision_config=tiny_dual_config.vision_config,
        projection_dim=16,
        similarity="token_wise",
    )
    torch.manual_seed(0)
    model = DualEncoderModel(config).eval()
    with torch.no_grad():
        image = model.encode_image(tiny_batch["pixel_values"])
        text = model.encode_text(tiny_batch["input_ids"], tiny_batch["attention_mask"])
    calls = []
    similarity = model.similarity
    model.similarity = lambda *args: calls.append(1) or similarity(*args)
    scale = model.get_logit_scale().detach()
    loss = model.contrastive_loss(image, text, scale)
    assert len(calls) == 1
    sim_i2t, sim_t2i = similarity(image, text)
    labels = torch.arange(sim_i2t.shape[0])
    expected = (F.cross_entropy(scale * sim_i2t, labels) + F.cross_entropy(scale * sim_t2i.t(), labels)) / 2
    torch.testing.assert_close(loss, expected)
