"""`hf-vlp pretrain`: train, save a Hub-ready model to `<output_dir>/model`, evaluate, write the metrics."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

from .building import build_model_and_processor
from .jobs import build_trainer, eval_name, log_summary, prepare_job, train_save_evaluate, write_card
from .sources import preset_image_size, resolve_demo


__all__ = ["FINAL_MODEL_SUBDIR", "pretrain_main"]

logger = logging.getLogger(__name__)

FINAL_MODEL_SUBDIR = "model"


def pretrain_main(argv: Sequence[str]) -> int:
    """`hf-vlp pretrain`: train, save a Hub-ready model to `<output_dir>/model`, evaluate, write the metrics."""
    model_args, data_args, training_args, _ = prepare_job(
        argv, "hf-vlp pretrain", "Contrastive (and fusion) image-text pre-training with the hf-vlp trainer."
    )
    demo_eval = resolve_demo(data_args, preset_image_size(model_args), training_args.seed)
    from transformers import set_seed

    set_seed(training_args.seed)
    model, processor = build_model_and_processor(model_args, pretraining=True)
    trainer, gallery, zero_shot = build_trainer(model, processor, data_args, training_args)
    model_dir = os.path.join(training_args.output_dir, FINAL_MODEL_SUBDIR)
    metrics = train_save_evaluate(trainer, training_args, model_dir, gallery is not None or zero_shot is not None)
    if trainer.is_world_process_zero():
        log_summary(metrics, gallery, zero_shot)
        write_card(
            model_dir,
            results=metrics or None,
            training_args=training_args,
            datasets=[data_args.dataset] if data_args.dataset else None,
            eval_dataset=eval_name(data_args, demo_eval),
        )
        if demo_eval:
            # The Space (`hf-vlp demo`) shows the demo's eval images as its default gallery, from next to the model.
            shutil.copytree(data_args.eval_dir, os.path.join(training_args.output_dir, "eval"), dirs_exist_ok=True)
        logger.info("Model saved to %s (load it with AutoModel.from_pretrained)", model_dir)
    return 0
