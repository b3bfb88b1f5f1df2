"""Trainer callbacks of the training side: momentum (EMA) updates, per-epoch dataset state, GRIT group refresh.

Each callback does one thing at the hook where the Trainer's loop order makes it correct: the momentum encoder moves
once per optimizer step (`on_optimizer_step`, after `optimizer.step()`), not once per micro-batch as ALBEF's
in-`forward` update does, which under gradient accumulation would compound the momentum.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


if TYPE_CHECKING:
    from .trainer import VLPTrainer

__all__ = [
    "DatasetEpochCallback",
    "GritRefreshCallback",
    "MomentumUpdateCallback",
    "base_model_of",
    "current_epoch",
    "unwrap_model",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DeepSpeed / `torch.compile` wrappers (PEFT models are left as they are:
    they forward attribute look-ups such as `momentum_update` to the base model)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def base_model_of(model: nn.Module) -> nn.Module:
    """The user's model inside wrappers, and inside a PEFT model its base model (whose `forward` and config are the
    model's own)."""
    inner = unwrap_model(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def current_epoch(state: TrainerState) -> int:
    """The 0-based epoch the Trainer is in (or about to start), from `state.epoch` (a float of progress).

    `state.epoch` is `epoch + steps_done / steps_in_epoch`, so an epoch boundary is an exact integer and a run
    resumed mid-epoch floors to the epoch it is resuming.
    """
    return math.floor((state.epoch or 0.0) + 1e-9)


class MomentumUpdateCallback(TrainerCallback):
    """Call `model.momentum_update()` once per optimizer step, when the (unwrapped) model has it.

    Fusion models with a momentum encoder (ALBEF-style momentum distillation, MoCo-style queues) expose
    `momentum_update()`; the EMA must follow the *optimizer* steps so that gradient accumulation does not change
    the effective momentum. Models without the method are left alone.
    """

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        update = getattr(unwrap_model(model), "momentum_update", None) if model is not None else None
        if callable(update):
            update()


class DatasetEpochCallback(TrainerCallback):
    """Tell the training dataset which epoch starts, for per-epoch choices such as which caption of an image to use.

    accelerate forwards `set_epoch` to the *sampler* when the sampler has one (its default seedable random sampler
    does), and then never to the dataset, so a dataset's per-epoch caption draw would otherwise repeat epoch 0.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(current_epoch(state))


class GritRefreshCallback(TrainerCallback):
    """Re-compute the GRIT-VLP groups at the start of every `grit_refresh_epochs`-th epoch (never the first one,
    when the model's embeddings are still random).

    The groups are computed with the model of the moment (one no-grad encoding pass over the training set) and
    used for the epoch that follows; a run resumed mid-epoch restores the groups saved in its checkpoint instead
    of recomputing them with a half-trained model (`VLPTrainer` saves and loads them).
    """

    def __init__(self, trainer: VLPTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        epoch = current_epoch(state)
        refresh_every = getattr(args, "grit_refresh_epochs", 1)
        if epoch > 0 and epoch % refresh_every == 0:
            self.trainer.refresh_grit_groups(epoch)
