"""hf-vlp: Hugging Face Hub-native Chinese vision-language pre-training.

Importing `hf_vlp` registers its models with transformers' Auto classes, so `AutoModel`,
`AutoProcessor` and the zero-shot pipeline load hf-vlp folders like built-in models.
"""

from . import auto as _auto  # registers the Auto classes
from .adapters import default_lora_config, load_adapter, merge_adapter, prepare_peft_model
from .factory import config_for_preset, create_model, load_tokenizer, processor_for_preset
from .hub import HubPushError, push_model_folder
from .model_card import render_model_card, write_model_card
from .models import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_ZERO_SHOT_PROMPT,
    DualEncoderConfig,
    DualEncoderModel,
    DualEncoderOutput,
    FusionEncoderConfig,
    FusionEncoderForPreTraining,
    FusionEncoderForPreTrainingOutput,
    FusionEncoderForRetrieval,
    FusionEncoderOutput,
    FusionRetrievalEmbeddings,
    InvalidImageError,
    RetrievalEmbeddings,
    VLPImageProcessor,
    VLPProcessor,
    list_presets,
    preset_info,
    sanitize_image,
    token_wise_similarity,
)
from .tokenization import build_chinese_tokenizer


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_ZERO_SHOT_PROMPT",
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "FusionEncoderConfig",
    "FusionEncoderForPreTraining",
    "FusionEncoderForPreTrainingOutput",
    "FusionEncoderForRetrieval",
    "FusionEncoderOutput",
    "FusionRetrievalEmbeddings",
    "HubPushError",
    "InvalidImageError",
    "RetrievalEmbeddings",
    "VLPImageProcessor",
    "VLPProcessor",
    "__version__",
    "build_chinese_tokenizer",
    "config_for_preset",
    "create_model",
    "default_lora_config",
    "load_adapter",
    "load_tokenizer",
    "merge_adapter",
    "prepare_peft_model",
    "processor_for_preset",
    "list_presets",
    "preset_info",
    "push_model_folder",
    "render_model_card",
    "sanitize_image",
    "token_wise_similarity",
    "write_model_card",
]
