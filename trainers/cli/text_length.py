"""How long a text may be for a model: the text tower's positions, and the default length capped at them.

A leaf module (nothing of the CLI imported) because both model building (`building`) and the argument checks
(`errors.check_max_length`) need it, and building imports the checks.
"""

from __future__ import annotations

from typing import Any


__all__ = ["default_text_length", "text_positions"]


def text_positions(config: Any) -> int | None:
    """How many tokens the text tower can embed: its position table, less RoBERTa-style reserved rows (those count
    positions from `pad_token_id + 1`); None for towers without a learned table (e.g. rotary)."""
    text_config = getattr(config, "text_config", config)
    positions = getattr(text_config, "max_position_embeddings", None)
    if positions is None:
        return None
    if text_config.model_type in ("roberta", "xlm-roberta", "camembert", "data2vec-text"):
        positions -= (text_config.pad_token_id or 0) + 1
    return positions


def default_text_length(config: Any, processor_default: int | None) -> int:
    """The text length when `--max-length` is not given: the processor's (52 for a new model), capped at the text
    tower's positions. Chinese-CLIP's 52 on a tower with 32 positions would fail at step 0 with an index error deep
    inside its embedding layer."""
    from hf_vlp.models.processing_vlp import DEFAULT_MAX_LENGTH  # (torch: not imported by `hf-vlp --help`)

    positions = text_positions(config)
    default = processor_default or DEFAULT_MAX_LENGTH
    return min(default, positions) if positions is not None else default
