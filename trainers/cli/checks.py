"""Checks of a job's arguments that run before anything heavy: each mistake is a `UserError` naming the fix.

`check_job_args` runs right after parsing (before a model is built or data is read), so a typo costs a second, not
a model load; the checks that need the data or the model (`data_error`, `check_max_length`) run where those are
read.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

from .errors import RUNTIME, USAGE, UserError, closest_names, looks_like_path


__all__ = ["check_distributed_launch", "check_job_args", "check_model_path", "data_error", "describe_folder"]


class _ReplacedByRefusal(logging.Filter):
    """Drops transformers' warning for a multi-process launch without distributed training, which
    `check_distributed_launch` refuses in one line naming the fix (the warning is logged only in that situation)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torch.distributed process group is initialized, but parallel_mode")


# Installed on import: the CLI imports this module before it parses the TrainingArguments that log the warning.
logging.getLogger("transformers.training_args").addFilter(_ReplacedByRefusal())

# Column names that usually hold the caption, in the order they are suggested for `--text-column`.
CAPTION_COLUMNS = ("caption", "text", "captions", "sentence", "title", "description", "desc", "query")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def describe_folder(folder: str, flag: str) -> None:
    """Refuse an image-folder flag whose folder is missing, holds no images, or has images but no metadata file."""
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise UserError(f"{flag} {folder}: the folder {what}", RUNTIME)
    names = os.listdir(folder)
    if any(name in ("metadata.jsonl", "metadata.csv") for name in names):
        return
    images = [name for name in names if name.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise UserError(
            f"{flag} {folder}: no images and no metadata.jsonl in the folder; an image folder holds the images and a "
            'metadata.jsonl with one {"file_name": ..., "text": ...} line per image',
            RUNTIME,
        )
    raise UserError(
        f"{flag} {folder}: {len(images)} images but no metadata.jsonl; add one with a "
        '{"file_name": ..., "text": ...} line per image',
        RUNTIME,
    )


def check_model_path(model: str | None) -> None:
    """Refuse a `--model` that looks like a path (see `looks_like_path`) but is no saved model folder; never looked
    up on the Hub."""
    if model is None or not looks_like_path(model):
        return
    local = os.path.expanduser(model)
    if not os.path.isdir(local):
        what = "is a file, not a model folder" if os.path.exists(local) else "does not exist"
        raise UserError(
            f"--model {model}: the folder {what} (a model folder holds the config.json written by save_pretrained; "
            "`hf-vlp pretrain --recipe demo` writes hf_vlp_demo_output/model)",
            RUNTIME,
        )
    if not os.path.isfile(os.path.join(local, "config.json")):
        from hf_vlp.space.loading import run_output_hint

        raise UserError(
            f"--model {model}: no config.json in the folder (not a saved model){run_output_hint(model)}", RUNTIME
        )


def _check_preset(preset: str | None) -> None:
    if preset is None:
        return
    from hf_vlp import list_presets

    names = list_presets()
    if preset not in names:
        hint = closest_names(preset, names) or f"presets: {', '.join(names)}"
        raise UserError(f"no preset {preset!r}; {hint}", USAGE)


def _check_distributed_grad_cache(training_args: Any) -> None:
    """Gradient caching needs one process or DDP: refuse it with FSDP / DeepSpeed, from the flags or accelerate."""
    if not getattr(training_args, "grad_cache_chunk_size", 0):
        return
    engine = None
    if training_args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        engine = "DeepSpeed"
    elif training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        engine = "FSDP"
    if engine:
        raise UserError(
            f"--grad-cache-chunk-size works with one process or DDP only, not {engine}: drop it (use plain batches)",
            USAGE,
        )


def check_distributed_launch(training_args: Any) -> None:
    """Refuse several launched processes that the Trainer would not train as one job.

    `torchrun` / `accelerate launch` on a machine without GPUs start the processes, but accelerate sets up no
    distributed training for them (`DistributedType.NO`: no DDP wrapper, no data sharding; its FSDP needs GPUs) unless
    `--use_cpu` asks for DDP over gloo. Every rank would then train its own copy of the model, unsynchronised, on the
    same batches, while torch.distributed is initialised all the same, so the contrastive loss would gather each
    batch's duplicate from the other ranks as negatives.
    `TrainingArguments` sets up the devices (and the process group) while it is parsed, with a warning about this
    situation that `_ReplacedByRefusal` drops: its advice (`torch.distributed.launch`) does not help here.
    """
    launched = int(os.environ.get("WORLD_SIZE") or 1)
    if launched <= 1:
        return
    from transformers.training_args import ParallelMode

    if training_args.parallel_mode not in (ParallelMode.NOT_PARALLEL, ParallelMode.NOT_DISTRIBUTED):
        return
    fsdp = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    why = "accelerate sets up FSDP on GPUs only" if fsdp else "no GPU found and no --use_cpu"
    raise UserError(
        f"{launched} processes were launched but none is set up for distributed training ({why}), so each would "
        "train its own copy of the model: on CPU add --use_cpu (DDP over gloo), or run one process",
        USAGE,
    )


def _check_resume(training_args: Any) -> None:
    value = training_args.resume_from_checkpoint
    if value is None:
        return
    if value.lower() in ("true", "latest", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        output_dir = training_args.output_dir
        if not os.path.isdir(output_dir) or get_last_checkpoint(output_dir) is None:
            raise UserError(
                f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}; drop the flag to start "
                "fresh, or pass the --output_dir of the run to resume",
                RUNTIME,
            )
    elif not os.path.isdir(value):
        raise UserError(f"--resume_from_checkpoint {value}: no such checkpoint folder", RUNTIME)


def check_job_args(model_args: Any, data_args: Any, training_args: Any) -> None:
    """Every argument mistake that can be seen without loading a model or reading data."""
    check_model_path(model_args.model)
    _check_preset(model_args.preset)
    _check_distributed_grad_cache(training_args)
    check_distributed_launch(training_args)
    _check_resume(training_args)
    for flag, folder in (("--train-dir", data_args.train_dir), ("--eval-dir", data_args.eval_dir)):
        if folder:
            describe_folder(folder, flag)
    for flag, path in (("--train-file", data_args.train_file), ("--eval-file", data_args.eval_file)):
        if path and "://" not in path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: no such file", RUNTIME)
    if getattr(data_args, "train_shards", None) and training_args.max_steps <= 0:
        raise UserError(
            "--train-shards streams the data, which has no length to count epochs by: add --max_steps N", USAGE
        )
    _check_zero_shot_protocol(data_args)


def _check_zero_shot_protocol(data_args: Any) -> None:
    """Read the zero-shot class and template files and check the preset's name now, so that a bad one fails before
    training, not after it (they are read again where the zero-shot set is built)."""
    from hf_vlp.zero_shot import ZERO_SHOT_PRESETS, load_class_names, load_templates

    preset = getattr(data_args, "zero_shot_preset", None)
    if preset and preset not in ZERO_SHOT_PRESETS:
        hint = closest_names(preset, ZERO_SHOT_PRESETS) or f"available: {', '.join(ZERO_SHOT_PRESETS)}"
        raise UserError(f"--zero-shot-preset {preset}: no such preset; {hint}", USAGE)
    if getattr(data_args, "zero_shot_classes", None):
        load_class_names(data_args.zero_shot_classes)
    if getattr(data_args, "zero_shot_templates", None):
        load_templates(data_args.zero_shot_templates)


def data_error(error: Exception) -> UserError | None:
    """A `UserError` with the flag to pass for a reader's missing-column error (None for other errors)."""
    argument = getattr(error, "argument", None)
    if argument is None:
        return None
    flag = "--" + argument.replace("_", "-")
    available = [str(column) for column in error.available]
    candidates = [name for name in CAPTION_COLUMNS if name in available] if argument == "text_column" else []
    candidates = candidates or difflib.get_close_matches(error.column, available, n=1, cutoff=0.5)
    fix = f"pass {flag} {candidates[0]}" if candidates else f"pass {flag} with one of them"
    return UserError(
        f"{error.source} has no {error.column!r} column (columns: {', '.join(available)}): {fix}", RUNTIME
    )
