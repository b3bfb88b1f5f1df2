"""Gradient caching with SigLIP's sigmoid loss: the plain full-batch gradients, the learned bias's included."""

from __future__ import annotations

import torch

from tests.trainers.helpers import small_model
from trainers import grad_cache_backward


def test_gradient_caching_gives_the_plain_sigmoid_gradients_bias_included(tiny_batch):
    model = small_model(contrastive_loss="sigmoid").double()
    batch = {
        **tiny_batch,
        "pixel_values": tiny_batch["pixel_values"].double(),
        "image_ids": torch.tensor([0, 1, 0, 2]),
    }
    model(**batch, return_loss=True).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    grad_cache_backward(model, batch, chunk_size=3, backward=torch.Tensor.backward, image_ids=batch["image_ids"])
    cached = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert cached.keys() == plain.keys() and "logit_bias" in cached
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-9, atol=1e-12, msg=name)
