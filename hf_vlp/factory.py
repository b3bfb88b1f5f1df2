"""Build models and processors by preset name, the way open_clip's `create_model` and timm's registry work.

Kept out of `hf_vlp/models/` because it is not needed by a saved model's remote code, and it may reach the
Hub (tokenizers, pretrained towers) where the model files must not.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .models import VLPImageProcessor, VLPProcessor
from .models.presets import preset_info
from .tokenization import build_chinese_tokenizer


__all__ = ["BUILTIN_TOKENIZER", "config_for_preset", "create_model", "load_tokenizer", "processor_for_preset"]

BUILTIN_TOKENIZER = "builtin-chinese"


def load_tokenizer(name_or_path: str, **hub_kwargs) -> PreTrainedTokenizerBase:
    """`"builtin-chinese"` gives the offline GB2312 tokenizer; anything else goes to `AutoTokenizer`."""
    if name_or_path == BUILTIN_TOKENIZER:
        return build_chinese_tokenizer()
    return AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)


def processor_for_preset(name: str, tokenizer: PreTrainedTokenizerBase | str | None = None) -> VLPProcessor:
    """The processor a preset expects: its image size and text length, and its tokenizer unless one is given."""
    info = preset_info(name)["processor"]
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer or info["tokenizer"])
    size = info["image_size"]
    return VLPProcessor(
        VLPImageProcessor(size={"height": size, "width": size}), tokenizer, max_length=info["max_length"]
    )


def config_for_preset(name: str, **overrides):
    """The config of a preset, of whichever family's config class it belongs to."""
    family = preset_info(name)["family"]
    config_class = AutoConfig.for_model(f"hf_vlp_{family}").__class__
    return config_class.from_preset(name, **overrides)


def create_model(name: str, **overrides) -> PreTrainedModel:
    """A randomly initialised model of a preset (config overrides as keyword arguments).

    For pretrained weights use `from_pretrained` on a converted checkpoint (`hf_vlp.convert`) or
    `DualEncoderModel.from_vision_text_pretrained`; the preset's `pretrained` entry names the sources.
    """
    return AutoModel.from_config(config_for_preset(name, **overrides))
