"""DiDE distillation in training (`VLPTrainingArguments.distill_teacher`): a frozen fusion teacher, a dual student.

The losses themselves are `hf_vlp.distillation`'s (model side, so they can be tested and reused without a Trainer);
this module is what the trainer adds around them: loading the teacher after checking that this student can learn
from it (a dual encoder sharing the teacher's tokenizer, every image token kept, no gradient caching, which would
split the pairs the teacher scores), and adding the weighted terms to the student's outputs, each logged as
`*_distill_loss` and their weighted sum as `distill_loss`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .arguments import OptionConflictError, VLPTrainingArguments
from .callbacks import base_model_of


__all__ = ["add_distillation", "load_distill_teacher"]

logger = logging.getLogger(__name__)


def load_distill_teacher(model: nn.Module, args: VLPTrainingArguments) -> nn.Module:
    """The frozen fusion teacher of `args.distill_teacher`, after checking the student `model` can learn from it."""
    from hf_vlp import DualEncoderModel
    from hf_vlp.distillation import load_distillation_teacher

    student = base_model_of(model)
    if not isinstance(student, DualEncoderModel):
        raise OptionConflictError(
            f"distill_teacher trains a dual-encoder student; the model is {type(student).__name__}"
        )
    if args.grad_cache_chunk_size:
        raise OptionConflictError(
            "distill_teacher cannot be combined with grad_cache_chunk_size (the teacher needs pairs)"
        )
    if student.config.vision_patch_dropout:
        raise OptionConflictError(
            "distill_teacher matches the teacher's attention over every image token: train the student with "
            "vision_patch_dropout=0"
        )
    teacher = load_distillation_teacher(args.distill_teacher, args.device)
    if teacher.config.text_config.vocab_size != student.config.text_config.vocab_size:
        raise OptionConflictError(
            f"distill_teacher {args.distill_teacher} has a {teacher.config.text_config.vocab_size}-token "
            f"vocabulary and the student {student.config.text_config.vocab_size}: both must share the tokenizer"
        )
    logger.info("Distilling from the fusion teacher %s (frozen)", args.distill_teacher)
    return teacher


def add_distillation(
    model: nn.Module, teacher: nn.Module, inputs: dict[str, Any], outputs: Any, args: VLPTrainingArguments
) -> dict[str, Any]:
    """The student's outputs with the DiDE terms against the teacher added to its loss."""
    from hf_vlp.distillation import distillation_loss

    weight, itm_weight = args.distill_weight, args.distill_itm_weight
    weights = {
        "attention_distill_loss": weight,
        "itc_distill_loss": weight,
        "itm_distill_loss": weight if itm_weight is None else itm_weight,
    }
    terms = distillation_loss(
        base_model_of(model),
        teacher,
        inputs,
        temperature=args.distill_temperature,
        attention_weight=weights["attention_distill_loss"],
        itc_weight=weights["itc_distill_loss"],
        itm_weight=weights["itm_distill_loss"],
        student_output=outputs,
    )
    distilled = {key: value for key, value in terms.items() if key in weights}
    distill = sum((weights[key] * value for key, value in distilled.items()), torch.zeros_like(terms["loss"]))
    return {**dict(outputs), **distilled, "distill_loss": distill, "loss": terms["loss"]}
