"""hf-vlp: Hugging Face Hub-native Chinese vision-language pre-training.

Importing `hf_vlp` registers its models with transformers' Auto classes, so `AutoModel`,
`AutoProcessor` and the zero-shot pipeline load hf-vlp folders like built-in models.
"""

from . import auto as _auto  # registers the Auto classes
from .factory import config_for_preset, create_model, load_tokenizer, processor_for_preset
from .models import (
    DualEncoderConfig,
    DualEncoderModel,
    DualEncoderOutput,
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
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "InvalidImageError",
    "RetrievalEmbeddings",
    "VLPImageProcessor",
    "VLPProcessor",
    "__version__",
    "build_chinese_tokenizer",
    "config_for_preset",
    "create_model",
    "load_tokenizer",
    "processor_for_preset",
    "list_presets",
    "preset_info",
    "sanitize_image",
    "token_wise_similarity",
]
