"""Gradient caching gives the gradients of the plain full-batch computation (dropout off), for global and token-wise
similarity, with uneven sub-batches and shared-image positives, directly and through the trainer."""

from __future__ import annotations

import pytest
import torch

from tests.trainers.helpers import Regression, RegressionData, small_model, training_args
from trainers import VLPTrainer, grad_cache_backward
from trainers.data import ImageTextCollator, ImageTextDataset, demo_records


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
TOKEN_WISE = {"similarity": "token_wise", "token_reduction": "learned", "image_tokens_kept": 4, "text_tokens_kept": 4}


def _batch(processor, n: int = 7) -> dict:
    records = demo_records(n, image_size=32)
    items = [dict(record, text=record["text"][0]) for record in records]
    items[1] = dict(items[0], text=records[0]["text"][1])  # a second caption of image 0: a shared positive
    batch = ImageTextCollator(processor)(items)
    return {**{key: batch[key] for key in MODEL_INPUTS}, "image_ids": batch["image_index"]}


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("overrides", [{}, TOKEN_WISE], ids=["global", "token_wise"])
def test_grad_cache_equals_full_batch_gradients(small_processor, overrides):
    # float64: the sub-batch matmuls round differently from the full-batch ones, and the sharp softmax amplifies
    # float32 rounding to ~1e-5 relative; in float64 the two computations agree to ~1e-12.
    model = small_model(logit_scale_init_value=3.0, **overrides).double()
    batch = _batch(small_processor)
    batch["pixel_values"] = batch["pixel_values"].double()
    model(**batch, return_loss=True).loss.mul(0.5).backward()
    plain = _grads(model)

    loss = grad_cache_backward(
        model, batch, chunk_size=3, backward=torch.Tensor.backward, loss_scale=0.5, image_ids=batch["image_ids"]
    )
    cached = _grads(model)
    assert loss.ndim == 0 and not loss.requires_grad
    assert cached.keys() == plain.keys()
    assert "logit_scale" in cached and any(name.startswith("vision_model.") for name in cached)
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_trainer_step_with_grad_cache_matches_the_plain_step(tmp_path, small_processor):
    records = demo_records(8, image_size=32)
    weights, losses = [], []
    for chunk in (0, 3):
        model = small_model()
        args = training_args(tmp_path, per_device_train_batch_size=8, max_steps=1, grad_cache_chunk_size=chunk)
        trainer = VLPTrainer(
            model=model,
            args=args,
            train_dataset=ImageTextDataset(records, caption_strategy="first"),
            processing_class=small_processor,
        )
        trainer.train()
        weights.append({name: param.detach().clone() for name, param in model.named_parameters()})
        losses.append(trainer.state.log_history[0]["itc_loss"])
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_grad_cache_refuses_models_without_embedding_methods(tmp_path):
    args = training_args(tmp_path, grad_cache_chunk_size=2)
    trainer = VLPTrainer(model=Regression(), args=args, train_dataset=RegressionData(8))
    with pytest.raises(ValueError, match="dual encoder"):
        trainer.train()


def test_grad_cache_replays_dropout_masks(small_processor):
    """With dropout on, the re-encoding pass must draw the masks of the first pass: the result then equals one
    graph-building pass started from the same RNG state (without the replay it would mix two sets of masks)."""
    model = small_model()
    for module in model.text_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    model.train()
    batch = _batch(small_processor)
    text = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}

    torch.manual_seed(7)
    image, caption = model.encode_image(batch["pixel_values"]), model.encode_text(**text)
    model.contrastive_loss(image, caption, model.get_logit_scale(), batch["image_ids"]).backward()
    reference = _grads(model)

    torch.manual_seed(7)
    grad_cache_backward(
        model, batch, chunk_size=len(batch["input_ids"]), backward=torch.Tensor.backward, image_ids=batch["image_ids"]
    )
    cached = _grads(model)
    for name, grad in reference.items():
        torch.testing.assert_close(cached[name], grad, msg=name)
