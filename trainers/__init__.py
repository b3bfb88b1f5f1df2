"""hf-vlp training side: Trainer subclass, data readers, collators, the `hf-vlp` CLI.

The model side (`hf_vlp`) never imports this package; this package builds on `hf_vlp`'s public API.
Data readers, datasets and the collator live in `trainers.data`.

Names are imported on first use, so that `hf-vlp --help` (which imports `trainers.cli`) does not pay for torch and
the transformers Trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .arguments import DataArguments, JobArguments, ModelArguments, OptionConflictError, VLPTrainingArguments
    from .callbacks import DatasetEpochCallback, GritRefreshCallback, MomentumUpdateCallback
    from .cli.finetune import FinetuneArguments, build_peft_config
    from .evaluation import (
        EvalRuntime,
        ZeroShotSet,
        build_zero_shot_set,
        chance_recall,
        evaluate_retrieval,
        evaluate_zero_shot,
    )
    from .grad_cache import grad_cache_backward
    from .sampler import GritSampler, grit_grouping
    from .trainer import VLPTrainer

_LOCATIONS = {
    "DataArguments": "arguments",
    "JobArguments": "arguments",
    "ModelArguments": "arguments",
    "OptionConflictError": "arguments",
    "VLPTrainingArguments": "arguments",
    "DatasetEpochCallback": "callbacks",
    "GritRefreshCallback": "callbacks",
    "MomentumUpdateCallback": "callbacks",
    "EvalRuntime": "evaluation",
    "ZeroShotSet": "evaluation",
    "build_zero_shot_set": "evaluation",
    "chance_recall": "evaluation",
    "evaluate_retrieval": "evaluation",
    "evaluate_zero_shot": "evaluation",
    "FinetuneArguments": "cli.finetune",
    "build_peft_config": "cli.finetune",
    "grad_cache_backward": "grad_cache",
    "GritSampler": "sampler",
    "grit_grouping": "sampler",
    "VLPTrainer": "trainer",
}

__all__ = sorted(_LOCATIONS)


def __getattr__(name: str) -> Any:
    if name not in _LOCATIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LOCATIONS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LOCATIONS))
