"""What a card says about training: the measured results the trainer wrote (as the Hub's `model-index`) and the
reader-relevant, non-secret training arguments."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from .description import read_json


__all__ = ["eval_results_from_metrics", "hyperparameters", "load_results"]

# Metric keys the trainer reports (after the `eval_` / `test_` prefix and an optional qualifier such as a dataset
# name or `rerank`): retrieval recalls (hf_vlp.retrieval.retrieval_recall) and zero-shot accuracy.
_METRIC = re.compile(
    r"^(?P<split>eval|test)_(?:(?P<qualifier>[\w\-]+?)_)?"
    r"(?P<metric>(?:i2t|t2i)_R@\d+|i2t_mean|t2i_mean|mean_recall|zero_shot_top\d+)$"
)
_SPLITS = {"eval": "validation", "test": "test"}

# Training arguments worth a reader's attention; hf-vlp's own arguments (fields that `TrainingArguments` lacks) are
# shown too. Everything else (logging, saving, paths, hub settings) is noise, or private.
_HYPERPARAMETER_KEYS = (
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
    "gradient_checkpointing",
)
_PRIVATE_KEY = re.compile(r"(token|secret|password|passwd|credential|api_key|auth)", re.IGNORECASE)
_PATH_KEY = re.compile(r"(_dir|_path|_file|_url|^output|^logging|^hub_|^push_to_hub|^report_to$|^run_name$)")


def load_results(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The Trainer's metrics saved in `folder`: `all_results.json`, else `eval_results.json`, else None."""
    for name in ("all_results.json", "eval_results.json"):
        data = read_json(Path(folder) / name)
        if data is not None:
            return data
    return None


def _metric_label(qualifier: str | None, metric: str) -> str:
    if metric.startswith(("i2t_R@", "t2i_R@")):
        direction = "image→text" if metric.startswith("i2t") else "text→image"
        label = f"{direction} R@{metric.split('@')[1]}"
    elif metric in ("i2t_mean", "t2i_mean"):
        label = f"{'image→text' if metric.startswith('i2t') else 'text→image'} mean recall"
    elif metric == "mean_recall":
        label = "mean recall"
    else:
        label = f"zero-shot top-{metric.removeprefix('zero_shot_top')} accuracy"
    return f"{label} ({qualifier})" if qualifier else label


def eval_results_from_metrics(metrics: Mapping[str, Any], dataset: str) -> list[EvalResult]:
    """The retrieval and zero-shot metrics of a Trainer result dict as `model-index` entries.

    `metric_type` is the trainer's key without its split prefix (e.g. `i2t_R@1`, `mean_recall`), so the numbers
    read back from a card map one-to-one onto what the trainer logged. Loss, runtime and throughput are left out.
    """
    results = []
    for key, value in metrics.items():
        match = _METRIC.match(key)
        if match is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric = match["metric"]
        zero_shot = metric.startswith("zero_shot")
        qualifier = match["qualifier"]
        results.append(
            EvalResult(
                task_type="zero-shot-image-classification" if zero_shot else "image-text-retrieval",
                task_name="Zero-shot image classification" if zero_shot else "Image-text retrieval",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=_SPLITS[match["split"]],
                metric_type=f"{qualifier}_{metric}" if qualifier else metric,
                metric_name=_metric_label(qualifier, metric),
                metric_value=float(value),
            )
        )
    return results


def hyperparameters(training_args: Any) -> list[tuple[str, str]]:
    """Reader-relevant, non-secret training arguments from a `TrainingArguments` (or subclass) or a mapping."""
    if training_args is None:
        return []
    from transformers import TrainingArguments

    if dataclasses.is_dataclass(training_args):
        values = {f.name: getattr(training_args, f.name, None) for f in dataclasses.fields(training_args)}
    else:
        values = dict(training_args)
    base_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    rows = []
    for key, value in values.items():
        if key not in _HYPERPARAMETER_KEYS and key in base_fields:
            continue
        if value is None or value == "" or _PRIVATE_KEY.search(key) or _PATH_KEY.search(key):
            continue
        if key == "max_steps" and value == -1:
            continue
        value = getattr(value, "value", value)  # enums (lr_scheduler_type, optim)
        if not isinstance(value, (str, int, float, bool, list, tuple)):
            continue
        rows.append((key, str(list(value)) if isinstance(value, (list, tuple)) else str(value)))
    return rows
