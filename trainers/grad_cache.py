"""Gradient caching (GradCache, Gao et al. 2021; open_clip's `--accum-freq`) for contrastive dual encoders.

A contrastive loss couples every pair of the batch, so plain gradient accumulation shrinks the set of negatives
to the micro-batch. Gradient caching keeps the full batch as negatives with the memory of one sub-batch:

1. encode the batch sub-batch by sub-batch without building a graph, keeping only the embeddings;
2. compute the loss on the full batch of embeddings (as leaf tensors) and back-propagate it to the embeddings
   (and to the temperature, which the loss uses directly);
3. re-encode each sub-batch *with* a graph and back-propagate the cached embedding gradients through it.

The parameter gradients are those of the plain full-batch computation. Dropout would draw different masks in the
two passes, so each sub-batch's RNG state is recorded in step 1 and replayed in step 3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from hf_vlp.models.retrieval_core import (
    RetrievalEmbeddings,
    RetrievalModel,
    cat_embeddings,
    implementation_of,
    tensor_fields,
)


__all__ = [
    "ContrastiveModel",
    "average_gradients",
    "check_grad_cache_support",
    "grad_cache_backward",
    "text_inputs_of",
]

_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@runtime_checkable
class ContrastiveModel(RetrievalModel, Protocol):
    """A retrieval model whose whole loss is a contrastive loss of per-item embeddings (a dual encoder): what
    gradient caching needs, since it recomputes the loss from cached embeddings."""

    def contrastive_loss(
        self,
        image: RetrievalEmbeddings,
        text: RetrievalEmbeddings,
        logit_scale: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def check_grad_cache_support(model: nn.Module) -> None:
    """Raise unless the model is a `ContrastiveModel`.

    Fusion models, whose ITM/MLM terms run a cross encoder on pairs, cannot be split this way (they have no
    `contrastive_loss` of embeddings alone).
    """
    if implementation_of(model, ContrastiveModel) is None:
        raise ValueError(
            f"grad_cache_chunk_size needs a model whose loss is a contrastive loss of per-item embeddings "
            f"(a dual encoder with contrastive_loss); {type(model).__name__} cannot be used"
        )


def text_inputs_of(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The text-tower arguments present in a batch."""
    return {key: inputs[key] for key in _TEXT_KEYS if inputs.get(key) is not None}


class _RngState:
    """The CPU and current-accelerator RNG states, to replay dropout masks in the re-encoding pass."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with this state, and leave the RNG as it was before the block."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _as_leaves(output: RetrievalEmbeddings) -> RetrievalEmbeddings:
    """The fields as leaf tensors; floating ones collect the loss gradient."""
    return type(output)(
        **{
            key: value.detach().requires_grad_(value.is_floating_point())
            for key, value in tensor_fields(output).items()
        }
    )


def grad_cache_backward(
    model: nn.Module,
    inputs: dict[str, Any],
    chunk_size: int,
    backward: Callable[[torch.Tensor], None],
    loss_scale: float = 1.0,
    image_ids: torch.Tensor | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Accumulate into `.grad` the gradients of `loss_scale * contrastive_loss(full batch)`, sub-batch by sub-batch.

    Args:
        model: the unwrapped dual encoder (`encode_image`, `encode_text`, `contrastive_loss`, `get_logit_scale`).
        inputs: the batch (`pixel_values` and the text inputs), already on the model's device.
        chunk_size: sub-batch size of the encoding passes.
        backward: how to back-propagate the scaled loss (`accelerator.backward`, which applies fp16 loss scaling;
            the cached embedding gradients then carry the same scale into step 3).
        loss_scale: e.g. `1 / gradient_accumulation_steps`.
        image_ids: per-pair image ids for the multi-positive loss (see `DualEncoderModel.contrastive_loss`).
        autocast: context manager for the encoding passes (mixed precision).

    Returns:
        The unscaled full-batch loss, detached.

    Under `torch.distributed`, the loss gathers every rank's embeddings with gradient as in the plain forward, and
    the parameter gradients stay local: the caller averages them across ranks (DDP's own hooks only run after a
    forward through the DDP wrapper, which this function does not use).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pixel_values = inputs["pixel_values"]
    text = text_inputs_of(inputs)
    batch = pixel_values.shape[0]
    bounds = [(start, min(start + chunk_size, batch)) for start in range(0, batch, chunk_size)]

    # 1. Encode without a graph, recording the RNG state each sub-batch starts with.
    states, images, texts = [], [], []
    with torch.no_grad():
        for start, stop in bounds:
            states.append(_RngState(pixel_values.device))
            with autocast():
                images.append(model.encode_image(pixel_values[start:stop]))
                texts.append(model.encode_text(**{key: value[start:stop] for key, value in text.items()}))

    # 2. Full-batch loss on leaf embeddings; its backward fills the embedding gradients (and the temperature's).
    image_all, text_all = _as_leaves(cat_embeddings(images)), _as_leaves(cat_embeddings(texts))
    del images, texts
    with autocast():
        loss = model.contrastive_loss(image_all, text_all, model.get_logit_scale(), image_ids)
    backward(loss * loss_scale)

    # 3. Re-encode each sub-batch with a graph, replaying its RNG state, and push the cached gradients through.
    for (start, stop), state in zip(bounds, states):
        with state.replay(), autocast():
            image = model.encode_image(pixel_values[start:stop])
            text_out = model.encode_text(**{key: value[start:stop] for key, value in text.items()})
        tensors, grads = [], []
        for cached, fresh in ((image_all, image), (text_all, text_out)):
            for key, value in tensor_fields(fresh).items():
                grad = tensor_fields(cached)[key].grad
                if grad is not None and value.requires_grad:
                    tensors.append(value)
                    grads.append(grad[start:stop])
        if tensors:
            torch.autograd.backward(tensors, grads)
    return loss.detach()


def average_gradients(model: nn.Module) -> None:
    """DDP's gradient averaging, for the gradient-cache path that does not run through the DDP forward."""
    world = dist.get_world_size()
    handles, grads = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)
        handles.append(dist.all_reduce(param.grad, async_op=True))
    for handle in handles:
        handle.wait()
    for grad in grads:
        grad.div_(world)
