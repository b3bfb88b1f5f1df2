"""Named model presets: the usual Chinese VLP sizes, instantiable offline from the config alone.

A preset holds the architecture (towers, projection width, similarity) and where real weights for it live
on the Hub (`pretrained`: a converted Chinese-CLIP checkpoint, or tower ids for
`from_vision_text_pretrained`), plus the image size and text length the processor should use. Shipped with
saved models (Hub custom code) because `DualEncoderConfig.from_preset` reads it; plain Python, no files.
"""

from __future__ import annotations

import copy
from typing import Any

from .processing_vlp import DEFAULT_MAX_LENGTH


__all__ = ["PRESETS", "TINY_VOCAB_SIZE", "list_presets", "preset_config_dict", "preset_info"]

# Size of `hf_vlp.build_chinese_tokenizer()`'s vocabulary (GB2312 hanzi + ASCII + punctuation + specials);
# a test keeps the two in step.
TINY_VOCAB_SIZE = 7581
# MLM token ids of that tokenizer ([PAD], [CLS], [SEP] never masked; [MASK]); a test keeps them in step too.
_TINY_MLM_TOKENS = {"mask_token_id": 4, "special_token_ids": [0, 2, 3]}

_BERT_BASE_CHINESE = {
    "model_type": "bert",
    "vocab_size": 21128,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
_BERT_LARGE_CHINESE = {
    **_BERT_BASE_CHINESE,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}


def _clip_vision(hidden: int, layers: int, heads: int, patch: int, image: int = 224) -> dict[str, Any]:
    return {
        "model_type": "clip_vision_model",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": hidden * 4,
        "patch_size": patch,
        "image_size": image,
    }


def _tiny_text() -> dict[str, Any]:
    return {
        "model_type": "bert",
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def _tiny_vision() -> dict[str, Any]:
    return {**_clip_vision(hidden=64, layers=2, heads=4, patch=8, image=64), "intermediate_size": 128}


PRESETS: dict[str, dict[str, Any]] = {
    "chinese-clip-vit-base-patch16": {
        "family": "dual_encoder",
        "description": "Chinese-CLIP ViT-B/16 with a Chinese RoBERTa-wwm-ext base text tower (188M parameters).",
        "config": {
            "text_config": _BERT_BASE_CHINESE,
            "vision_config": _clip_vision(768, 12, 12, 16),
            "projection_dim": 512,
        },
        "pretrained": {"convert_from": "OFA-Sys/chinese-clip-vit-base-patch16"},
        "processor": {
            "image_size": 224,
            "max_length": DEFAULT_MAX_LENGTH,
            "tokenizer": "OFA-Sys/chinese-clip-vit-base-patch16",
        },
    },
    "chinese-clip-vit-large-patch14": {
        "family": "dual_encoder",
        "description": "Chinese-CLIP ViT-L/14 with a Chinese RoBERTa-wwm-ext base text tower (406M parameters).",
        "config": {
            "text_config": _BERT_BASE_CHINESE,
            "vision_config": _clip_vision(1024, 24, 16, 14),
            "projection_dim": 768,
        },
        "pretrained": {"convert_from": "OFA-Sys/chinese-clip-vit-large-patch14"},
        "processor": {
            "image_size": 224,
            "max_length": DEFAULT_MAX_LENGTH,
            "tokenizer": "OFA-Sys/chinese-clip-vit-large-patch14",
        },
    },
    "wukong-vit-large-filip": {
        "family": "dual_encoder",
        "description": (
            "Wukong-style ViT-L/14 + 24-layer Chinese text tower with token-wise (FILIP) similarity, learned "
            "token reduction to 12 image tokens and a locked image tower (LiT)."
        ),
        "config": {
            "text_config": _BERT_LARGE_CHINESE,
            "vision_config": _clip_vision(1024, 24, 16, 14),
            "projection_dim": 256,
            "similarity": "token_wise",
            "token_reduction": "learned",
            "image_tokens_kept": 12,
            "text_tokens_kept": 24,
            "lock_vision": True,
        },
        "pretrained": {"vision": "openai/clip-vit-large-patch14", "text": "hfl/chinese-roberta-wwm-ext-large"},
        "processor": {"image_size": 224, "max_length": 32, "tokenizer": "hfl/chinese-roberta-wwm-ext-large"},
    },
    "tiny": {
        "family": "dual_encoder",
        "description": "A 2-layer, 64-wide model for tests and the built-in demo (trains in minutes on a CPU).",
        "config": {"text_config": _tiny_text(), "vision_config": _tiny_vision(), "projection_dim": 64},
        "pretrained": {},
        "processor": {"image_size": 64, "max_length": 32, "tokenizer": "builtin-chinese"},
    },
    "tiny-filip": {
        "family": "dual_encoder",
        "description": "The tiny model with token-wise (FILIP) similarity and learned token reduction.",
        "config": {
            "text_config": _tiny_text(),
            "vision_config": _tiny_vision(),
            "projection_dim": 64,
            "similarity": "token_wise",
            "token_reduction": "learned",
            "image_tokens_kept": 8,
            "text_tokens_kept": 8,
        },
        "pretrained": {},
        "processor": {"image_size": 64, "max_length": 32, "tokenizer": "builtin-chinese"},
    },
}


# Fusion encoders. The tiny ones share the tiny towers (so `from_dual_encoder` works on a "tiny" dual encoder);
# the large ones use Chinese BERT vocabularies, whose MLM ids are FusionEncoderConfig's defaults.
_TINY_FUSION = {
    "text_config": _tiny_text(),
    "vision_config": _tiny_vision(),
    "projection_dim": 64,
    "num_fusion_layers": 2,
    "fusion_intermediate_size": 128,
    "fusion_hidden_dropout_prob": 0.0,
    "fusion_attention_dropout_prob": 0.0,
    "queue_size": 256,
    # BERT's init std 0.02 suits width 768 (~0.55 / sqrt(768)); at width 64 it is a sixth of the fan-in scale and
    # the new cross-attention layers barely move ITM for hundreds of steps. 0.1 matches the CLIP tower's own scale.
    "initializer_factor": 5.0,
    **_TINY_MLM_TOKENS,
}
PRESETS.update(
    {
        "tiny-fusion": {
            "family": "fusion_encoder",
            "description": "A 2-layer, 64-wide ALBEF-style fusion encoder (2 fusion layers) for tests and the demo.",
            "config": _TINY_FUSION,
            "pretrained": {},
            "processor": {"image_size": 64, "max_length": 32, "tokenizer": "builtin-chinese"},
        },
        "tiny-r2d2": {
            "family": "fusion_encoder",
            "description": "The tiny fusion encoder in R2D2's two-way mode with target- and feature-guided distillation.",
            "config": {
                **_TINY_FUSION,
                "fusion_mode": "two_way",
                "target_distill_weight": 1.0,
                "feature_distill_weight": 1.0,
            },
            "pretrained": {},
            "processor": {"image_size": 64, "max_length": 32, "tokenizer": "builtin-chinese"},
        },
        "albef-base-chinese": {
            "family": "fusion_encoder",
            "description": (
                "ALBEF-base layout for Chinese: CLIP ViT-B/16, a 6-layer Chinese RoBERTa-wwm text tower and 6 fusion "
                "layers (ALBEF splits one 12-layer BERT the same way), ITC with a 65,536 momentum queue, ITM, MLM."
            ),
            "config": {
                "text_config": {**_BERT_BASE_CHINESE, "num_hidden_layers": 6},
                "vision_config": _clip_vision(768, 12, 12, 16),
                "projection_dim": 256,
                "num_fusion_layers": 6,
                "queue_size": 65536,
                "momentum": 0.995,
                "distill_alpha": 0.4,
                "mlm_probability": 0.15,
            },
            "pretrained": {"vision": "openai/clip-vit-base-patch16", "text": "hfl/chinese-roberta-wwm-ext"},
            "processor": {"image_size": 224, "max_length": 30, "tokenizer": "hfl/chinese-roberta-wwm-ext"},
        },
        "r2d2-vit-large": {
            "family": "fusion_encoder",
            "description": (
                "R2D2 layout: CLIP ViT-L/14 and a 24-layer Chinese RoBERTa-wwm-large text tower, two 6-layer cross "
                "encoders (text-image and image-text), target- and feature-guided distillation."
            ),
            "config": {
                "text_config": _BERT_LARGE_CHINESE,
                "vision_config": _clip_vision(1024, 24, 16, 14),
                "projection_dim": 768,
                "num_fusion_layers": 6,
                "fusion_mode": "two_way",
                "queue_size": 65536,
                "target_distill_weight": 1.0,
                "feature_distill_weight": 1.0,
            },
            "pretrained": {"vision": "openai/clip-vit-large-patch14", "text": "hfl/chinese-roberta-wwm-ext-large"},
            "processor": {"image_size": 224, "max_length": 32, "tokenizer": "hfl/chinese-roberta-wwm-ext-large"},
        },
    }
)


def list_presets(family: str | None = None) -> list[str]:
    """Names of the presets, optionally only those of one family (`"dual_encoder"`, `"fusion_encoder"`)."""
    return sorted(name for name, preset in PRESETS.items() if family is None or preset["family"] == family)


def preset_info(name: str) -> dict[str, Any]:
    """The whole preset record (a copy): config, family, description, pretrained sources, processor."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return copy.deepcopy(PRESETS[name])


def preset_config_dict(name: str, family: str | None = None) -> dict[str, Any]:
    """Config keyword arguments of a preset, checked to belong to `family` when given."""
    info = preset_info(name)
    if family is not None and info["family"] != family:
        raise ValueError(
            f"preset {name!r} is a {info['family']} preset, not {family}; {family} presets: "
            f"{', '.join(list_presets(family))}"
        )
    return info["config"]
