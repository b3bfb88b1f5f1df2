"""From a collated batch to the model's `forward` arguments, for `VLPTrainer.compute_loss` and gradient caching.

The collator adds side-channel keys (`trainers.data.SIDE_CHANNEL_KEYS`: skipped-sample counts, per-image hashes)
that no model takes; they are popped here. What a model *may* take is passed only when its `forward` accepts it
(looked up through DDP and PEFT wrappers), so that `VLPTrainer` trains any model that returns a `loss`: the hash
as `image_ids` (pairs of one picture are positives), `return_loss=True`, and ALBEF's warmed-up distillation
weight `alpha`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from trainers.data import SIDE_CHANNEL_KEYS

from .callbacks import base_model_of, unwrap_model


__all__ = ["distill_alpha", "empty_batch_loss", "forward_accepts", "model_inputs"]

logger = logging.getLogger(__name__)


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether the model's `forward` takes `name` (through PEFT and DDP wrappers)."""
    parameters = inspect.signature(base_model_of(model).forward).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def model_inputs(model: nn.Module, batch: dict[str, Any], use_image_ids: bool) -> tuple[dict[str, Any] | None, int]:
    """The batch without the collator's side-channel keys, plus `image_ids` (with `use_image_ids`) and `return_loss`
    where accepted, and the number of samples the collator skipped. The inputs are None when nothing is left (the
    collator dropped every sample of the batch as bad)."""
    inputs = dict(batch)
    skipped = int(inputs.pop("num_skipped_samples", 0))
    image_hash = inputs.pop("image_hash", None)
    for key in SIDE_CHANNEL_KEYS:
        # a tensor `image_ids` is the user's own model input; the collator's is a list of strings
        if key != "image_ids" or not isinstance(inputs.get(key), torch.Tensor):
            inputs.pop(key, None)
    if not any(isinstance(value, torch.Tensor) and value.numel() for value in inputs.values()):
        return None, skipped
    use_hash = use_image_ids and image_hash is not None and "image_ids" not in inputs
    if use_hash and forward_accepts(model, "image_ids"):
        inputs["image_ids"] = image_hash
    if forward_accepts(model, "return_loss"):
        inputs["return_loss"] = True
    return inputs, skipped


def distill_alpha(model: nn.Module, warmup_steps: int, step: int) -> float | None:
    """ALBEF's warm-up of the momentum-distillation weight: `distill_alpha * min(1, step / warmup_steps)`; None
    (the model's own weight) without a warm-up, outside training, or for a model without `distill_alpha`."""
    target = getattr(getattr(unwrap_model(model), "config", None), "distill_alpha", None)
    if not warmup_steps or target is None or not model.training or not forward_accepts(model, "alpha"):
        return None
    return float(target) * min(1.0, step / warmup_steps)


def empty_batch_loss(model: nn.Module, device: torch.device) -> torch.Tensor:
    """Zero loss connected to every trainable parameter, for a batch whose samples were all bad."""
    logger.warning("Every sample of a batch was bad; the batch contributes nothing to this step")
    params = [p for p in model.parameters() if p.requires_grad]
    return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=device))
