"""The shared base of the hf-vlp configurations: two tower sub-configs of any transformers model type and a
contrastive head, as every model family has them.

[`VLPConfig`] builds the sub-configs, makes the option checks every family makes (pooling modes, head width) and
reads the named presets (`from_preset`); `DualEncoderConfig` and `FusionEncoderConfig` add their own options.

This file is shipped inside every saved model folder (Hub custom code), so it imports only transformers and its
sibling files, never `hf_vlp.*`.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig


__all__ = ["TEXT_POOLING_MODES", "VISION_POOLING_MODES", "VLPConfig", "build_sub_config"]

TEXT_POOLING_MODES = ("cls", "mean")
VISION_POOLING_MODES = ("pooler", "cls", "mean")


def build_sub_config(value: PreTrainedConfig | dict | None, default_model_type: str) -> PreTrainedConfig:
    """Turn a sub-config given as a config object, a dict (as read from `config.json`) or None into a config.

    Any transformers model type is accepted (BERT, RoBERTa, ViT, CLIP vision, Swin ...): the dict's own
    `model_type` picks the class through `AutoConfig`, which is what lets users plug any Hub tower in.
    """
    if isinstance(value, PreTrainedConfig):
        return value
    value = dict(value or {})
    model_type = value.pop("model_type", default_model_type)
    value.pop("transformers_version", None)
    return AutoConfig.for_model(model_type, **value)


class VLPConfig(PreTrainedConfig):
    """Shared base of the hf-vlp configurations: tower sub-configs, the checks every family makes, presets."""

    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}
    default_text_model_type = "bert"
    default_vision_model_type = "clip_vision_model"
    # The `presets.py` family `from_preset` reads ("dual_encoder", "fusion_encoder").
    preset_family = None

    def _set_towers(self, text_config: PreTrainedConfig | dict | None, vision_config: PreTrainedConfig | dict | None):
        """Set `text_config` / `vision_config` from configs, dicts or None (see `build_sub_config`)."""
        self.text_config = build_sub_config(text_config, self.default_text_model_type)
        self.vision_config = build_sub_config(vision_config, self.default_vision_model_type)

    def _check_choices(self, choices: dict[str, tuple[str, ...]]) -> None:
        """Refuse a misspelt mode (`choices` maps an option to its allowed values; the pooling modes of every family
        are checked too) and an empty contrastive head, at construction, not hours into a run."""
        for name, allowed in {
            "text_pooling": TEXT_POOLING_MODES,
            "vision_pooling": VISION_POOLING_MODES,
            **choices,
        }.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> VLPConfig:
        """Build a named preset of this family (see `hf_vlp.list_presets(family)`); offline, from the config alone."""
        from .presets import preset_config_dict

        values = preset_config_dict(name, family=cls.preset_family)
        values.update(overrides)
        return cls(**values)
