"""`hf-vlp finetune`: adapt a released checkpoint to a domain with LoRA (or another linear-layer PEFT method).

Most users do not pre-train: they take a released model and adapt it to their domain (e-commerce as in
MUGE / Product1M, medical, news), then publish. This job does that path in one command:

1. load the base (`--model DIR_OR_HUB_ID`, with `--revision` / `--trust-remote-code`) and wrap it with a PEFT config
   built for hf-vlp models (`hf_vlp.adapters`: targets read per tower, momentum copies never adapted);
2. evaluate the base zero-shot on the evaluation set (adapters disabled), so the gain is measured, not assumed;
3. train the adapters with `VLPTrainer` (every `TrainingArguments` flag and `--recipe` work as for `pretrain`);
4. evaluate the adapted model and write `OUTPUT/adapter` (adapter weights, processor, model card naming the base
   and, with `--hub_model_id`, the repo it is for) and, with `--merge`, `OUTPUT/merged` (a plain Hub-ready model
   with code).

Results: `OUTPUT/base_eval_results.json` (`eval_base_*` keys) and `OUTPUT/eval_results.json` (`eval_*`), both also
in `OUTPUT/all_results.json`. `hf-vlp push OUTPUT/adapter --repo-id ...` publishes the adapter.

With `--demo`, the built-in demo set is rendered in the `--demo-domain` look, by default `"night"`: the domain the
demo model (`hf-vlp pretrain --recipe demo`, trained on `"plain"`) never saw, so `--recipe demo-lora` is a real
domain adaptation in a few CPU minutes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .building import build_model_and_processor
from .errors import USAGE, UserError
from .jobs import build_trainer, eval_name, prepare_job, record_evaluation, train_save_evaluate, write_card
from .sources import resolve_demo


if TYPE_CHECKING:
    from peft import PeftConfig
    from torch import nn

__all__ = [
    "ADAPTER_SUBDIR",
    "MERGED_SUBDIR",
    "PEFT_METHODS",
    "FinetuneArguments",
    "build_peft_config",
    "finetune_main",
]

logger = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"
MERGED_SUBDIR = "merged"
#: PEFT methods `--peft` offers: the ones that adapt linear layers with a rank `r` and a scale `alpha`.
PEFT_METHODS = ("lora", "dora", "loha", "lokr")
_DEFAULT_LORA_DROPOUT = 0.05


@dataclass
class FinetuneArguments:
    """What `hf-vlp finetune` adds to the `pretrain` arguments: the PEFT method and where it goes, and the outputs."""

    peft: Literal["lora", "dora", "loha", "lokr"] = field(
        default="lora",
        metadata={"help": "PEFT method: LoRA, DoRA (weight-decomposed LoRA), LoHa or LoKr (Hadamard / Kronecker)."},
    )
    lora_towers: str = field(
        default="text,vision,fusion",
        metadata={"help": "Comma-separated towers to adapt, among text, vision, fusion (absent ones are skipped)."},
    )
    lora_target: Literal["qv", "attention", "all_linear"] = field(
        default="qv",
        metadata={
            "help": "Layers adapted in each transformer block: query+value projections, every attention "
            "projection, or every linear layer (attention and MLP)."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "Adapter rank."})
    lora_alpha: int = field(
        default=16, metadata={"help": "Adapter scaling numerator (the update is scaled by alpha/r)."}
    )
    lora_dropout: float | None = field(
        default=None,
        metadata={"help": f"Dropout on the adapter input (LoRA and DoRA only; default {_DEFAULT_LORA_DROPOUT})."},
    )
    lora_train_heads: bool = field(
        default=True,
        metadata={
            "help": "Also train the small heads in full (projections, ITM heads; PEFT's modules_to_save): they "
            "re-align fastest to a new domain and are saved with the adapter."
        },
    )
    merge: bool = field(
        default=False,
        metadata={"help": "Also write OUTPUT/merged: the adapter merged into the base, a plain Hub-ready model."},
    )
    demo_domain: Literal["plain", "night"] = field(
        default="night",
        metadata={
            "help": "Look of the demo set with --demo: 'night' (dark, outlined, noisy; the demo model was "
            "pre-trained on 'plain' and never saw it) or 'plain'."
        },
    )

    def __post_init__(self) -> None:
        towers = self.towers
        unknown = sorted(set(towers) - {"text", "vision", "fusion"})
        if not towers or unknown:
            raise ValueError(
                f"--lora-towers takes a comma-separated subset of text,vision,fusion; got {self.lora_towers!r}"
            )
        if self.lora_dropout is not None and self.peft not in ("lora", "dora"):
            raise ValueError(f"--lora-dropout applies to LoRA and DoRA; {self.peft} has no adapter-input dropout")

    @property
    def towers(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.lora_towers.split(",") if name.strip())


def build_peft_config(model: nn.Module, args: FinetuneArguments, revision: str | None = None) -> PeftConfig:
    """The PEFT config `args` describe for `model`: targets per tower read from its module names
    (`hf_vlp.adapters.default_target_modules`), heads in `modules_to_save` when `lora_train_heads`.

    `revision` (the base's Hub revision) is recorded in the adapter config, so the adapter names the exact base it
    was trained on.
    """
    from hf_vlp.adapters import default_lora_config, default_modules_to_save, default_target_modules, require_peft

    if args.peft in ("lora", "dora"):
        dropout = _DEFAULT_LORA_DROPOUT if args.lora_dropout is None else args.lora_dropout
        return default_lora_config(
            model,
            args.towers,
            args.lora_r,
            args.lora_alpha,
            dropout,
            target=args.lora_target,
            train_heads=args.lora_train_heads,
            use_dora=args.peft == "dora",
            revision=revision,
        )
    peft = require_peft()
    config_class = {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}[args.peft]
    return config_class(
        r=args.lora_r,
        alpha=args.lora_alpha,
        target_modules=default_target_modules(model, args.towers, args.lora_target),
        modules_to_save=default_modules_to_save(model) if args.lora_train_heads else None,
        revision=revision,
    )


# ---------------------------------------------------------------------------------------------- data
def _image_size(processor: Any) -> int:
    """The processor's input size: the demo is rendered at it, since anything larger is resized away."""
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    return int(size.get("height", 64))


def _hub_id(model: str) -> str | None:
    """`--model` when it names a Hub repo rather than a local folder: what the adapter's card links to."""
    return None if os.path.exists(model) else model


# ---------------------------------------------------------------------------------------------- job
def finetune_main(argv: Sequence[str]) -> int:
    """`hf-vlp finetune`: base zero-shot eval, PEFT training, adapted eval, adapter (+ merged model) with cards."""
    model_args, data_args, training_args, _, finetune_args = prepare_job(
        argv,
        "hf-vlp finetune",
        "Adapt a pre-trained image-text model to a domain with LoRA (or DoRA, LoHa, LoKr) and evaluate it against "
        "the zero-shot base.",
        extra=(FinetuneArguments,),
    )
    from transformers import set_seed

    from hf_vlp.adapters import merge_adapter

    if not model_args.model:
        raise UserError("--model DIR_OR_HUB_ID (the pre-trained model to adapt) is required", USAGE)
    set_seed(training_args.seed)
    model, processor = build_model_and_processor(model_args, pretraining=True)
    peft_config = build_peft_config(model, finetune_args, revision=model_args.revision)
    demo_eval = resolve_demo(data_args, _image_size(processor), training_args.seed, domain=finetune_args.demo_domain)
    trainer, gallery, zero_shot = build_trainer(model, processor, data_args, training_args, peft_config=peft_config)
    if trainer.is_world_process_zero():
        trainer.model.print_trainable_parameters()
    has_eval = gallery is not None or zero_shot is not None
    base_metrics: dict[str, float] = {}
    if has_eval:
        with trainer.model.disable_adapter():  # the base model exactly, whatever the method's initialisation
            base_metrics = record_evaluation(trainer, "base_eval", metric_key_prefix="eval_base")
    adapter_dir = os.path.join(training_args.output_dir, ADAPTER_SUBDIR)
    metrics = train_save_evaluate(trainer, training_args, adapter_dir, has_eval)

    base_model = _hub_id(model_args.model)
    eval_dataset = (
        f"hf-vlp demo ({finetune_args.demo_domain} domain)" if demo_eval else eval_name(data_args, demo_eval=False)
    )
    card = {
        "training_args": training_args,
        "datasets": [data_args.dataset] if data_args.dataset else None,
        "base_model": base_model,
        "eval_dataset": eval_dataset,
    }
    if trainer.is_world_process_zero():
        _summary(base_metrics, metrics)
        # The adapter's card shows the base's zero-shot numbers next to the adapted ones ("(base)" rows); its usage
        # snippet loads `--hub_model_id`, the repo the adapter is meant for (`hf-vlp push ... --repo-id` keeps it).
        results = {**base_metrics, **metrics} or None
        write_card(adapter_dir, results=results, repo_id=training_args.hub_model_id, **card)
        logger.info("Adapter saved to %s (load it with hf_vlp.adapters.load_adapter or PeftModel)", adapter_dir)
    if finetune_args.merge:
        merged = merge_adapter(trainer.model)
        if trainer.is_world_process_zero():
            merged_dir = os.path.join(training_args.output_dir, MERGED_SUBDIR)
            merged.save_pretrained(merged_dir)
            processor.save_pretrained(merged_dir)
            write_card(merged_dir, results=metrics or None, **card)
            logger.info("Merged model saved to %s (load it with AutoModel.from_pretrained)", merged_dir)
    return 0


def _summary(base: dict[str, float], adapted: dict[str, float]) -> None:
    """One line with the headline numbers before and after adaptation."""
    parts = [
        f"{label} {base[f'eval_base_{key}']:.1f} -> {adapted[f'eval_{key}']:.1f}"
        for key, label in (("mean_recall", "retrieval mean recall"), ("zero_shot_top1", "zero-shot top-1"))
        if f"eval_base_{key}" in base and f"eval_{key}" in adapted
    ]
    if parts:
        logger.info("Result (zero-shot base -> adapted): %s", "; ".join(parts))
