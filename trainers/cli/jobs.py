"""What the training jobs (`pretrain`, `evaluate`, `finetune`) share: parsing + set-up, the trainer, the run
(train -> save -> evaluate, with the metrics files), the model card and the summary."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checks import check_job_args
from .errors import RUNTIME, USAGE, UserError
from .parsing import parse_job_args, setup_logging
from .sources import build_eval_sets, build_train_dataset


__all__ = [
    "MAX_STEPS_ENV",
    "build_trainer",
    "eval_name",
    "log_summary",
    "prepare_job",
    "record_evaluation",
    "resume_value",
    "shrink_max_steps",
    "train_save_evaluate",
    "write_card",
]

logger = logging.getLogger(__name__)


def resume_value(value: str | None) -> str | bool | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: `latest` / `last` / `true` mean the newest one."""
    if value is None:
        return None
    return True if value.lower() in ("true", "latest", "last") else value


MAX_STEPS_ENV = "HF_VLP_MAX_STEPS"


def shrink_max_steps(training_args: Any) -> None:
    """Cap `max_steps` at `$HF_VLP_MAX_STEPS` when set: the README test runs the documented commands as written,
    only shorter (checkpoints are still written: the Trainer saves at the last step)."""
    cap = os.environ.get(MAX_STEPS_ENV)
    if cap:
        steps = training_args.max_steps
        training_args.max_steps = int(cap) if steps is None or steps <= 0 else min(steps, int(cap))


def prepare_job(argv: Sequence[str], prog: str, description: str, extra: Sequence[type] = ()) -> tuple:
    """Parse a job's arguments (see `parse_job_args`), set up logging and the CPU thread count."""
    parsed = parse_job_args(argv, prog, description, extra=extra)
    training_args, job_args = parsed[2], parsed[3]
    check_job_args(*parsed[:3])
    shrink_max_steps(training_args)
    setup_logging(training_args)
    if job_args.torch_threads:
        import torch

        torch.set_num_threads(job_args.torch_threads)
    return parsed


def build_trainer(
    model: Any, processor: Any, data_args: Any, training_args: Any, **trainer_kwargs: Any
) -> tuple[Any, Any, Any]:
    """The `VLPTrainer` of a job (train set, retrieval gallery and zero-shot set from the data flags), with
    the gallery and zero-shot set for the job's summary. `trainer_kwargs` (e.g. `peft_config`) go to the trainer."""
    from trainers.data import ImageTextCollator

    from ..trainer import VLPTrainer

    train_dataset = build_train_dataset(data_args, seed=training_args.seed)
    if train_dataset is None:
        raise UserError("no training data (--train-dir, --train-file, --dataset, --train-shards or --demo)", USAGE)
    gallery, zero_shot = build_eval_sets(data_args)
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        data_collator=ImageTextCollator(processor, max_length=processor.max_length, padding=data_args.text_padding),
        train_dataset=train_dataset,
        eval_dataset=gallery if gallery is not None else zero_shot,
        zero_shot_dataset=zero_shot if gallery is not None else None,
        processing_class=processor,
        **trainer_kwargs,
    )
    return trainer, gallery, zero_shot


def record_evaluation(trainer: Any, split: str = "eval", metric_key_prefix: str = "eval") -> dict[str, float]:
    """`trainer.evaluate()` (metrics keyed `<metric_key_prefix>_*`), logged and written to `<split>_results.json`."""
    metrics = trainer.evaluate(metric_key_prefix=metric_key_prefix)
    trainer.log_metrics(split, metrics)
    trainer.save_metrics(split, metrics)
    return metrics


def train_save_evaluate(trainer: Any, training_args: Any, save_dir: str, evaluate: bool) -> dict[str, float]:
    """Train (resuming from `--resume_from_checkpoint`), save the model (or adapter) to `save_dir`, write the train
    metrics and the trainer state, then, with `evaluate`, the eval metrics, which are returned ({} without)."""
    from transformers.trainer import TRAINING_ARGS_NAME

    result = trainer.train(resume_from_checkpoint=resume_value(training_args.resume_from_checkpoint))
    skipped = trainer.skipped_with_nothing_trained()
    if skipped:
        raise UserError(
            f"every training sample was unusable ({skipped} skipped; the warnings above name each file and why), so "
            "nothing was trained and no model was saved: fix or replace the data",
            RUNTIME,
        )
    trainer.save_model(save_dir)
    if trainer.is_world_process_zero():
        # `save_model` also pickles the TrainingArguments there; the Hub-ready folder (model or adapter) holds no
        # pickle: they live in the checkpoints, where resuming reads them.
        Path(save_dir, TRAINING_ARGS_NAME).unlink(missing_ok=True)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return record_evaluation(trainer) if evaluate else {}


def write_card(folder: str, **kwargs: Any) -> None:
    """`hf_vlp.model_card.write_model_card`, warning instead of failing: the weights are saved by then, and a card
    problem (e.g. a model family without a template) must not fail a finished run."""
    from hf_vlp.model_card import write_model_card

    try:
        write_model_card(folder, **kwargs)
    except Exception as error:
        logger.warning("Could not write the model card of %s: %s", folder, error)


def eval_name(data_args: Any, demo_eval: bool) -> str | None:
    """How the model card names the evaluation set."""
    if demo_eval:
        return "hf-vlp demo (rendered Chinese shapes)"
    if data_args.dataset:
        return f"{data_args.dataset} ({data_args.eval_split})" if data_args.eval_split else data_args.dataset
    source = data_args.eval_dir or data_args.eval_file
    return Path(source).name if source else None


def log_summary(metrics: dict | None, gallery: Any, zero_shot: Any) -> None:
    """One line that puts the headline numbers next to what random ranking / guessing would score."""
    from ..evaluation import chance_recall

    if not metrics:
        return
    parts = []
    if gallery is not None:
        chance = chance_recall(gallery)["mean_recall"]
        parts.append(f"retrieval mean recall {metrics['eval_mean_recall']:.1f} (random ranking: {chance:.1f})")
    if zero_shot is not None and "eval_zero_shot_top1" in metrics:
        guess = 100.0 / len(zero_shot.class_names)
        parts.append(f"zero-shot top-1 {metrics['eval_zero_shot_top1']:.1f}% (guessing: {guess:.1f}%)")
    logger.info("Result: %s", "; ".join(parts))
