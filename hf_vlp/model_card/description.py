"""What a card says about the model itself, read from a saved folder or an in-memory model: its family, config,
processor and parameter count (`describe`)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn


__all__ = ["FAMILY_TEMPLATES", "ModelDescription", "describe", "jsonable", "read_json"]

#: Templates per model family (the config's `model_type`), in the `model_cards` package.
FAMILY_TEMPLATES = {
    "hf_vlp_dual_encoder": "dual_encoder.md.j2",
    "hf_vlp_fusion_encoder": "fusion_encoder.md.j2",
}


@dataclasses.dataclass
class ModelDescription:
    """What a card needs to know about a model or adapter, read from a folder or from memory."""

    kind: str  # a family template name's stem ("dual_encoder", "fusion_encoder") or "adapter"
    config: dict[str, Any]  # the model config (for adapters: the base's, when known, else {})
    adapter_config: dict[str, Any] | None = None
    num_parameters: int | None = None
    processor: dict[str, Any] = dataclasses.field(default_factory=dict)
    folder: Path | None = None


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _safetensors_numel(path: Path) -> int:
    """Number of stored values of a safetensors file, from its JSON header only (no tensor is read)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
    return total


def _folder_parameters(folder: Path, stem: str) -> int | None:
    """Parameters stored in `{stem}.safetensors` or its shards (via the index), or None when absent."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return _safetensors_numel(single)
    index = read_json(folder / f"{stem}.safetensors.index.json")
    if index is None:
        return None
    return sum(_safetensors_numel(folder / shard) for shard in sorted(set(index["weight_map"].values())))


def _kind(config: Mapping[str, Any]) -> str:
    model_type = config.get("model_type", "")
    if model_type not in FAMILY_TEMPLATES:
        raise ValueError(
            f"no model card template for model_type {model_type!r}; hf-vlp families: {sorted(FAMILY_TEMPLATES)}"
        )
    return FAMILY_TEMPLATES[model_type].removesuffix(".md.j2")


def describe(folder_or_model: str | os.PathLike | nn.Module) -> ModelDescription:
    """Read a saved folder (model or adapter) or an in-memory model / `PeftModel` into a `ModelDescription`."""
    if isinstance(folder_or_model, nn.Module):
        return _describe_module(folder_or_model)
    folder = Path(folder_or_model)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    processor = {
        **(read_json(folder / "processor_config.json") or {}),
        **(read_json(folder / "preprocessor_config.json") or {}),
    }
    adapter_config = read_json(folder / "adapter_config.json")
    if adapter_config is not None:
        return ModelDescription(
            kind="adapter",
            config={},
            adapter_config=adapter_config,
            num_parameters=_folder_parameters(folder, "adapter_model"),
            processor=processor,
            folder=folder,
        )
    config = read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} holds neither config.json nor adapter_config.json")
    return ModelDescription(
        kind=_kind(config),
        config=config,
        num_parameters=_folder_parameters(folder, "model"),
        processor=processor,
        folder=folder,
    )


def _describe_module(model: nn.Module) -> ModelDescription:
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, Mapping) and hasattr(model, "get_base_model"):
        from peft import get_peft_model_state_dict

        adapter_name = getattr(model, "active_adapter", "default")
        adapter_config = peft_config[adapter_name].to_dict()
        stored = get_peft_model_state_dict(model, adapter_name=adapter_name)
        return ModelDescription(
            kind="adapter",
            config=model.get_base_model().config.to_dict(),
            adapter_config=json.loads(json.dumps(adapter_config, default=jsonable)),
            num_parameters=sum(t.numel() for t in stored.values()),
        )
    config = model.config.to_dict()
    return ModelDescription(
        kind=_kind(config), config=config, num_parameters=sum(p.numel() for p in model.parameters())
    )


def jsonable(value: Any) -> Any:
    """Sets (PEFT keeps `target_modules` lists as sets) and enums as JSON."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return getattr(value, "value", str(value))
