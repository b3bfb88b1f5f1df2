"""Argument dataclasses: `VLPTrainingArguments` for the trainer, and the model / data / job arguments of the CLI.

`VLPTrainingArguments` is every `transformers.TrainingArguments` flag plus what the stock Trainer has no notion of:
contrastive batches larger than memory (gradient caching), GRIT-VLP grouped mini-batches, momentum-distillation
warm-up, and the retrieval / zero-shot evaluation run by `VLPTrainer.evaluate`. `ModelArguments`, `DataArguments`
and `JobArguments` are what `hf-vlp pretrain` / `evaluate` add. All parse with `HfArgumentParser` from command-line
flags (underscores or dashes) and from YAML / JSON recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainingArguments

from hf_vlp.models.processing_vlp import DEFAULT_ZERO_SHOT_PROMPT
from hf_vlp.models.retrieval_core import COMBINE_MODES as RERANK_COMBINE_MODES
from hf_vlp.models.retrieval_core import parse_combine


__all__ = [
    "RERANK_COMBINE_MODES",
    "DataArguments",
    "JobArguments",
    "ModelArguments",
    "OptionConflictError",
    "VLPTrainingArguments",
    "parse_rerank_combine",
]


class OptionConflictError(ValueError):
    """Training options that cannot go together with each other, the model or the data (e.g. DiDE distillation with
    patch dropout); raised before the first step, and shown by the CLI as one line."""


@dataclass
class VLPTrainingArguments(TrainingArguments):
    """Training arguments of [`VLPTrainer`].

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False`, because image-text collators
    read raw `image`/`text` items and the trainer needs the collator's side-channel keys (`image_hash`,
    `num_skipped_samples`), none of which are `forward` arguments; and a constant learning rate after a 5% warm-up
    (`lr_scheduler_type="constant_with_warmup"`, `warmup_steps=0.05`) instead of a linear decay from step 0, which
    kept a fresh model on the ln(batch) loss plateau (`benchmarks/bench_quality.py` measures each choice).
    """

    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Drop dataset columns the model's forward does not take (off: collators need raw columns)."},
    )
    lr_scheduler_type: str = field(
        default="constant_with_warmup",
        metadata={
            "help": "Learning-rate schedule: constant after the warm-up by default. Decaying from the first step (the "
            "stock Trainer's linear, or CLIP's cosine) spends the budget's second half at a fraction of the rate; "
            "on real data a fresh model trained for a fixed budget ended at 0.69x the mean recall with cosine "
            "(benchmarks/bench_quality.py, row `cosine`). Use cosine for long runs that converge."
        },
    )
    warmup_steps: float = field(
        default=0.05,
        metadata={
            "help": "Linear warm-up: steps (an integer) or a fraction of the run in [0, 1). Contrastive training "
            "from a fresh start needs one: a full learning rate on step 0 throws the random embeddings around "
            "before the logits carry any signal."
        },
    )
    stock_weight_decay_groups: bool = field(
        default=False,
        metadata={
            "help": "Use the stock Trainer's weight-decay groups (everything but biases and LayerNorm weights). "
            "By default only weight matrices (parameters of 2+ dimensions) decay, as in CLIP / open_clip: "
            "never logit_scale (decay would pull the temperature to 1 and flatten the logits), norms, biases "
            "or class embeddings."
        },
    )
    use_image_ids: bool = field(
        default=True,
        metadata={
            "help": "Pass the collator's per-image hash as the model's `image_ids`, so pairs that share a picture "
            "are positives of each other in the contrastive loss instead of false negatives."
        },
    )
    grad_cache_chunk_size: int = field(
        default=0,
        metadata={
            "help": "Gradient caching (GradCache): encode the batch in sub-batches of this size, take the contrastive "
            "loss over the whole batch of embeddings, and back-propagate sub-batch by sub-batch, so the "
            "contrastive batch can be far larger than what fits in memory. 0 disables. Dual encoders only; "
            "single process or DDP."
        },
    )
    grit_sampling: bool = field(
        default=False,
        metadata={
            "help": "GRIT-VLP grouped mini-batches: after each refresh, batches are built from groups of similar "
            "pairs (found with the model's own embeddings), which makes in-batch negatives hard."
        },
    )
    grit_refresh_epochs: int = field(
        default=1,
        metadata={"help": "Re-compute the GRIT groups every this many epochs (the first epoch is always random)."},
    )
    grit_search_space: int = field(
        default=4096,
        metadata={
            "help": "GRIT groups are searched within random chunks of this many pairs (the paper uses 1920): the cost "
            "is quadratic in it, and smaller chunks keep some randomness across epochs."
        },
    )
    retrieval_topk: int = field(
        default=128,
        metadata={
            "help": "Candidates kept per query in retrieval evaluation (at least 10 for Recall@10); a fusion model's "
            "cross encoder re-ranks these (ALBEF k_test)."
        },
    )
    retrieval_chunk_size: int = field(
        default=4096,
        metadata={"help": "Gallery items scored at once in retrieval evaluation (bounds the similarity buffer)."},
    )
    rerank: bool = field(
        default=True,
        metadata={"help": "Re-rank the top-k with the model's cross encoder when the model has a re-ranking hook."},
    )
    rerank_combine: str = field(
        default="sum",
        metadata={
            "help": "Re-ranked score: 'cross' (cross-encoder score only, ALBEF), 'sum' (cross + contrastive, LAVIS) "
            "or a weight w in [0, 1] for w * cross + (1 - w) * contrastive."
        },
    )
    distill_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Ramp a fusion model's momentum-distillation weight linearly from 0 to its config's distill_alpha "
            "over this many optimizer steps (ALBEF: the first epoch); 0 keeps it constant."
        },
    )
    zero_shot_prompt: str = field(
        default=DEFAULT_ZERO_SHOT_PROMPT,
        metadata={"help": "Prompt template of zero-shot classification; '{}' is replaced by the class name."},
    )
    train_augmentation: bool = field(
        default=False,
        metadata={
            "help": "Retrieval-safe augmentation of training images: a random resized crop by the image processor's "
            "training mode (never a flip unless the processor's train_horizontal_flip is set: captions say 左/右). "
            "Training loader only; evaluation always sees whole images."
        },
    )
    train_crop_min_scale: float | None = field(
        default=None,
        metadata={
            "help": "With train_augmentation: the smallest share of the image's area a crop covers (crops cover "
            "[this, 1.0]); default: the processor's train_crop_scale (0.8 to 1.0)."
        },
    )
    distill_teacher: str | None = field(
        default=None,
        metadata={
            "help": "DiDE: a saved fusion-encoder folder whose cross-modal attention, similarities and match scores a "
            "dual-encoder student imitates (hf_vlp.distillation.distillation_loss). The teacher is loaded frozen, "
            "in eval mode, and run without gradients; it must share the student's tokenizer and image tokens. The ITM "
            "soft labels cost batch^2 teacher cross-encoder passes per step (in chunks of 256 pairs)."
        },
    )
    distill_weight: float = field(
        default=1.0,
        metadata={
            "help": "With distill_teacher: weight of each distillation term (attention, ITC and ITM soft labels) "
            "against the student's own contrastive loss (weight 1)."
        },
    )
    distill_itm_weight: float | None = field(
        default=None,
        metadata={
            "help": "With distill_teacher: weight of the ITM soft-label term alone (default: distill_weight). 0 skips "
            "it and its batch^2 teacher passes (about 10x the plain step at batch 64 on the tiny preset)."
        },
    )
    distill_temperature: float = field(
        default=1.0,
        metadata={"help": "With distill_teacher: softening temperature of the soft labels (KL scaled by T^2)."},
    )

    def __post_init__(self):
        if self.dataloader_num_workers == 0:
            # persistent workers need workers; `--dataloader_num_workers 0` must not fail on the CLI's default
            self.dataloader_persistent_workers = False
        if self.use_cpu or not torch.accelerator.is_available():
            # pinned memory only speeds copies to an accelerator; without one the DataLoader warns on every run
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.grad_cache_chunk_size < 0:
            raise ValueError(f"grad_cache_chunk_size must be >= 0 (0 disables), got {self.grad_cache_chunk_size}")
        if self.distill_warmup_steps < 0:
            raise ValueError(f"distill_warmup_steps must be >= 0, got {self.distill_warmup_steps}")
        if self.grit_refresh_epochs < 1:
            raise ValueError(f"grit_refresh_epochs must be >= 1, got {self.grit_refresh_epochs}")
        if self.grit_sampling and self.grit_search_space < self.per_device_train_batch_size:
            raise ValueError(
                f"grit_search_space ({self.grit_search_space}) must be at least the per-device batch size "
                f"({self.per_device_train_batch_size}): a group is searched within one chunk"
            )
        if self.retrieval_topk < 1 or self.retrieval_chunk_size < 1:
            raise ValueError("retrieval_topk and retrieval_chunk_size must be >= 1")
        parse_rerank_combine(self.rerank_combine)
        if self.train_crop_min_scale is not None and not 0.0 < self.train_crop_min_scale <= 1.0:
            raise ValueError(f"train_crop_min_scale must be in (0, 1], got {self.train_crop_min_scale}")
        if self.distill_weight < 0 or (self.distill_itm_weight or 0) < 0 or self.distill_temperature <= 0:
            raise ValueError("distill_weight and distill_itm_weight must be >= 0 and distill_temperature > 0")
        if "{}" not in self.zero_shot_prompt:
            raise ValueError(
                f"zero_shot_prompt needs a '{{}}' placeholder for the class name: {self.zero_shot_prompt!r}"
            )


def parse_rerank_combine(value: str) -> str | float:
    """`rerank_combine` as `hf_vlp.retrieval.rerank_topk` takes it: 'cross', 'sum' or a weight in [0, 1].

    The CLI can only give a string, so a weight arrives as e.g. "0.7"; the rules are the retrieval core's
    (`parse_combine`), the error names the flag.
    """
    try:
        return parse_combine(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"rerank_combine: {error}") from None


@dataclass
class ModelArguments:
    """Which model to train or evaluate: exactly one source, by precedence `model` > `model_config` > towers >
    `preset` (a recipe's preset gives way to a `--model` given on the command line)."""

    preset: str | None = field(default=None, metadata={"help": "A named preset (`hf_vlp.list_presets()`), e.g. tiny."})
    model_config: str | None = field(
        default=None,
        metadata={"help": "A saved config.json (or a folder holding one): a new, randomly initialised model."},
    )
    model: str | None = field(
        default=None, metadata={"help": "A saved model folder or Hub id to continue from (weights and processor)."}
    )
    text_model: str | None = field(
        default=None, metadata={"help": "Pretrained text tower (Hub id or folder); needs --vision-model too."}
    )
    vision_model: str | None = field(
        default=None, metadata={"help": "Pretrained vision tower (Hub id or folder); needs --text-model too."}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer (Hub id, folder, or 'builtin-chinese'); default: the preset's, the model's, or the "
            "text tower's."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of config values for a new model, or for a loaded one (e.g. "
            "'{\"lock_vision\": true}' for locked-image tuning)."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Text length in tokens (default: the processor's, 52 for a new model, capped at the text tower's "
            "positions; a longer value is refused)."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model / towers / tokenizer."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow Hub custom code of models that hf-vlp does not register itself."}
    )


DEFAULT_LABEL_COLUMN = "label"


@dataclass
class DataArguments:
    """Where the image-text pairs come from. One training source and one evaluation source at most."""

    train_dir: str | None = field(
        default=None,
        metadata={"help": "Training image folder with metadata.jsonl / metadata.csv (`file_name` column)."},
    )
    eval_dir: str | None = field(default=None, metadata={"help": "Evaluation image folder (same layout)."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training JSONL / CSV (image paths relative to the file), parquet, or Chinese-CLIP "
            "`<split>_imgs.tsv` (its `<split>_texts.jsonl` is read from the same folder)."
        },
    )
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation file (same formats as --train-file)."})
    dataset: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset: Hub id, builder name, or a save_to_disk folder."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of --dataset."})
    train_split: str = field(default="train", metadata={"help": "Split of --dataset to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split of --dataset to evaluate on."})
    train_shards: list[str] | None = field(
        default=None,
        metadata={
            "help": "Streaming training shards (tar / JSONL / CSV / parquet; paths, globs or fsspec URLs), split "
            "across processes and DataLoader workers; needs --max-steps."
        },
    )
    image_column: str = field(default="image", metadata={"help": "Image column (files, parquet, datasets)."})
    text_column: str = field(default="text", metadata={"help": "Caption column."})
    captions_column: str | None = field(
        default="captions", metadata={"help": "Optional column holding a list of captions per image."}
    )
    id_column: str | None = field(default=None, metadata={"help": "Image id column (rows sharing an image)."})
    label_column: str | None = field(
        default=DEFAULT_LABEL_COLUMN,
        metadata={"help": "Class label column of the eval set, for zero-shot classification."},
    )
    zero_shot_classes: str | None = field(
        default=None,
        metadata={
            "help": "Zero-shot class names, in label-index order (JSON list or TXT, one per line); eval labels are "
            "then class names or indices into them. Default: the eval set's distinct labels."
        },
    )
    zero_shot_templates: str | None = field(
        default=None,
        metadata={
            "help": "Zero-shot prompt templates with '{}' for the class name (JSON list or TXT, one per line); each "
            "class is the normalised mean of its templates' embeddings (Chinese-CLIP / ELEVATER ensembles)."
        },
    )
    zero_shot_preset: str | None = field(
        default=None,
        metadata={
            "help": "Class names and templates of a benchmark: 'imagenet-zh' (Chinese-CLIP's 1,000 Chinese "
            "ImageNet names and its templates, read from the installed cn-clip). Files given override its parts."
        },
    )
    text_padding: Literal["longest", "max_length"] = field(
        default="longest",
        metadata={
            "help": "Training batches pad captions to their longest caption ('longest': the text tower skips the "
            "padding of short captions) or to --max-length ('max_length': fixed shapes, for torch.compile modes "
            "that recompile on every new shape)."
        },
    )
    caption_strategy: str = field(
        default="sample",
        metadata={"help": "Images with several captions: 'sample' one per epoch, 'first', or 'explode' into pairs."},
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Shuffle buffer of streaming training (0: off)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation records."})
    demo: bool = field(
        default=False,
        metadata={"help": "Use the built-in demo set (rendered offline on first use) where no data source is given."},
    )
    demo_dir: str | None = field(
        default=None, metadata={"help": "Where the demo set lives (default: $HF_VLP_CACHE or ~/.cache/hf_vlp)."}
    )
    demo_num_train: int = field(default=2000, metadata={"help": "Demo training images."})
    demo_num_eval: int = field(default=200, metadata={"help": "Demo evaluation images."})


@dataclass
class JobArguments:
    """Options of the job itself rather than of the model, data or optimisation."""

    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A recipe from trainers/recipes (e.g. 'demo') or a YAML / JSON file of argument values; flags "
            "given on the command line override it."
        },
    )
    torch_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch intra-op threads. 1 is often fastest for small models on a shared CPU, where "
            "multi-threaded kernels mostly wait for each other."
        },
    )
