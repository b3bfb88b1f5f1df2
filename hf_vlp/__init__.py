"""hf-vlp: Hugging Face Hub-native Chinese vision-language pre-training.

Importing `hf_vlp` registers its models with transformers' Auto classes, so `AutoModel`,
`AutoProcessor` and the zero-shot pipeline load hf-vlp folders like built-in models. The public API of the shipped
model folder (`hf_vlp.models.__all__`) is re-exported whole, with the library's own helpers after it.
"""

from . import auto as _auto  # registers the Auto classes
from .adapters import default_lora_config, load_adapter, merge_adapter, prepare_peft_model
from .factory import config_for_preset, create_model, load_tokenizer, processor_for_preset
from .hub import HubPushError, push_model_folder
from .model_card import render_model_card, write_model_card
from .models import *  # noqa: F403  (hf_vlp.models' public API: model classes, configs, processors, defaults)
from .models import __all__ as _MODEL_API
from .tokenization import build_chinese_tokenizer
from .zero_shot import TemplateEnsembleZeroShotPipeline


__version__ = "0.1.0"

__all__ = [
    *_MODEL_API,
    "HubPushError",
    "TemplateEnsembleZeroShotPipeline",
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
    "push_model_folder",
    "render_model_card",
    "write_model_card",
]
