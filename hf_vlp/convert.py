"""Convert transformers `ChineseCLIPModel` checkpoints (OFA-Sys Chinese-CLIP) into `DualEncoderModel`s.

The public Chinese-CLIP weights are the strongest open Chinese image-text models; converting them lets users
start fine-tuning, FILIP/LiT experiments or fusion pre-training from them. The text tower becomes a plain
`BertModel` (the RoBERTa-wwm checkpoints are BERT-shaped) and the vision tower a `CLIPVisionModel`; both map
weight for weight, so text and image embeddings are identical before and after.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer, BertConfig, ChineseCLIPModel, CLIPVisionConfig
from transformers.utils import cached_file

from .models import DualEncoderConfig, DualEncoderModel, VLPImageProcessor, VLPProcessor


__all__ = ["ConversionError", "chinese_clip_to_dual_encoder", "convert_chinese_clip"]

# Fields of the Chinese-CLIP sub-configs that describe architecture; the rest (ids, dtype) stay default.
_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly (unexpected or missing weights)."""


def _pick(config, fields: tuple[str, ...]) -> dict:
    return {name: getattr(config, name) for name in fields if hasattr(config, name)}


def chinese_clip_to_dual_encoder(source: ChineseCLIPModel) -> DualEncoderModel:
    """Build a `DualEncoderModel` with exactly the weights of an in-memory `ChineseCLIPModel`."""
    config = DualEncoderConfig(
        text_config=BertConfig(**_pick(source.config.text_config, _TEXT_FIELDS)),
        vision_config=CLIPVisionConfig(**_pick(source.config.vision_config, _VISION_FIELDS)),
        projection_dim=source.config.projection_dim,
        logit_scale_init_value=source.config.logit_scale_init_value,
        text_pooling="cls",
        vision_pooling="pooler",
    )
    target = DualEncoderModel(config)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("text_model.pooler.")}
    result = target.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"Chinese-CLIP weights do not map one-to-one: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return target.to(dtype=next(source.parameters()).dtype)


def convert_chinese_clip(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    **hub_kwargs,
) -> DualEncoderModel:
    """Convert a Chinese-CLIP checkpoint (Hub id such as `OFA-Sys/chinese-clip-vit-base-patch16`, or folder).

    Writes a Hub-ready folder: weights, config with `auto_map`, the model code and, when the source has
    them, its tokenizer and a matching `VLPProcessor`. Returns the converted model.
    """
    model = chinese_clip_to_dual_encoder(ChineseCLIPModel.from_pretrained(source, dtype=dtype, **hub_kwargs))
    model.save_pretrained(output_dir)
    has_tokenizer = any(
        cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs) is not None
        for name in ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
    )
    # A weights-only source gets no processor rather than a made-up tokenizer; pair it with one later.
    tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs) if has_tokenizer else None
    if tokenizer is not None:
        size = model.config.vision_config.image_size
        processor = VLPProcessor(VLPImageProcessor(size={"height": size, "width": size}), tokenizer)
        processor.save_pretrained(output_dir)
    return model
