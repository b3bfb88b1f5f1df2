"""`hf-vlp evaluate`: retrieval (and zero-shot) metrics of a model, written to `<output_dir>/eval_results.json`."""

from __future__ import annotations

from collections.abc import Sequence

from .building import build_model_and_processor
from .errors import USAGE, UserError
from .jobs import log_summary, prepare_job
from .sources import build_eval_sets, preset_image_size, resolve_demo


__all__ = ["evaluate_main"]


def evaluate_main(argv: Sequence[str]) -> int:
    """`hf-vlp evaluate`: retrieval (and zero-shot) metrics of a model, written to `<output_dir>/eval_results.json`."""
    model_args, data_args, training_args, _ = prepare_job(
        argv, "hf-vlp evaluate", "Image-text retrieval and zero-shot evaluation of an hf-vlp model."
    )
    if not model_args.model:
        raise UserError(
            "hf-vlp evaluate needs --model: a trained model folder (e.g. hf_vlp_demo_output/model) or a Hub id; a "
            "--preset, --model-config or --text-model/--vision-model alone would be evaluated untrained",
            USAGE,
        )
    resolve_demo(data_args, preset_image_size(model_args), training_args.seed)
    from ..trainer import VLPTrainer

    model, processor = build_model_and_processor(model_args)
    gallery, zero_shot = build_eval_sets(data_args)
    if gallery is None and zero_shot is None:
        raise UserError("no evaluation data (--eval-dir, --eval-file, --dataset with --eval-split, or --demo)", USAGE)
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        eval_dataset=gallery if gallery is not None else zero_shot,
        zero_shot_dataset=zero_shot if gallery is not None else None,
        processing_class=processor,
    )
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        log_summary(metrics, gallery, zero_shot)
    return 0
