"""Rendering a card: the Jinja templates of the `model_cards` package filled with a model's description, results,
training arguments, versions and citations (`render_model_card`, `write_model_card`)."""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from ..models.processing_vlp import DEFAULT_ZERO_SHOT_PROMPT
from .citations import citations_for, is_r2d2
from .description import FAMILY_TEMPLATES, describe, read_json
from .results import eval_results_from_metrics, hyperparameters, load_results


__all__ = ["ADAPTER_TEMPLATE", "is_hub_id", "render_model_card", "write_model_card"]

ADAPTER_TEMPLATE = "adapter.md.j2"


def _versions(include_peft: bool) -> list[tuple[str, str]]:
    names = ["hf-vlp", "transformers", "torch", "huggingface_hub", "safetensors"] + (["peft"] if include_peft else [])
    versions = []
    for name in names:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _tower(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model_type": config.get("model_type", "unknown"),
        "hidden_size": config.get("hidden_size") or config.get("embed_dim"),
        "num_layers": config.get("num_hidden_layers") or (sum(config["depths"]) if "depths" in config else "?"),
        "image_size": config.get("image_size"),
        "patch_size": config.get("patch_size"),
    }


def _human(count: int | None) -> str | None:
    if count is None:
        return None
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit} ({count:,})"
    return f"{count:,}"


def is_hub_id(value: Any) -> bool:
    """A Hub repo id rather than a local path: `name` or `owner/name`, not absolute, not an existing folder."""
    if not isinstance(value, str) or not value or os.path.isabs(value) or Path(value).exists():
        return False
    return re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", value) is not None


def _environment() -> jinja2.Environment:
    """Templates come from the `model_cards` package, so they ship with a non-editable install."""
    root = files("model_cards")
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: root.joinpath(name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails rendering instead of printing nothing
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )


def render_model_card(
    folder_or_model: str | os.PathLike | nn.Module,
    results: Mapping[str, Any] | str | os.PathLike | None = None,
    training_args: Any = None,
    datasets: Iterable[str] | None = None,
    base_model: str | list[str] | None = None,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str = "apache-2.0",  # noqa: A002 (the Hub's metadata field name)
    eval_dataset: str | None = None,
    tags: Iterable[str] = (),
) -> ModelCard:
    """Render the card of a saved folder or in-memory model (family template) or adapter (`adapter.md.j2`).

    Args:
        folder_or_model: a folder written by `save_pretrained` (model or PEFT adapter), a model, or a `PeftModel`.
        results: the Trainer's metrics (a dict, or a path to `all_results.json` / `eval_results.json`); by default
            read from the folder. Retrieval / zero-shot keys (`eval_i2t_R@1` ... `eval_mean_recall`,
            `eval_zero_shot_top1`) become the `model-index` and the evaluation table.
        training_args: `TrainingArguments` (or hf-vlp's subclass) or a dict; only hyper-parameters are shown,
            never tokens, credentials or local paths.
        datasets: Hub dataset ids (or names) the model was trained on.
        base_model: Hub id(s) the model was initialised from (towers, or the base of an adapter; for adapters the
            default is the adapter config's `base_model_name_or_path` when it is a Hub id).
        repo_id: where the model lives on the Hub, for the usage snippet (default: the model name).
        model_name: the card's title and `model-index` name (default: repo name, else folder name).
        eval_dataset: name of the evaluation set in `model-index` (default: the first of `datasets`).
        tags: extra Hub tags.
    """
    info = describe(folder_or_model)
    if isinstance(results, (str, os.PathLike)):
        results = read_json(Path(results))
        if results is None:
            raise FileNotFoundError(f"no results file at {results}")
    elif results is None and info.folder is not None:
        results = load_results(info.folder)
    datasets = list(datasets or [])
    adapter = info.adapter_config
    if base_model is None and adapter is not None and is_hub_id(adapter.get("base_model_name_or_path")):
        base_model = adapter["base_model_name_or_path"]
    bases = [base_model] if isinstance(base_model, str) else list(base_model or [])
    if model_name is None:
        model_name = (
            repo_id.split("/")[-1] if repo_id else (info.folder.resolve().name if info.folder else "hf-vlp-model")
        )
    repo_id = repo_id or model_name
    eval_dataset = eval_dataset or (datasets[0] if datasets else "custom")
    eval_results = eval_results_from_metrics(results or {}, eval_dataset)

    config = info.config
    kind_tags = {"dual_encoder": ["dual-encoder"], "fusion_encoder": ["fusion-encoder", "albef"]}
    card_tags = ["custom_code", "hf-vlp", "chinese", "clip", "vision-language", "image-text-retrieval"]
    card_tags += kind_tags.get(info.kind, [])
    if info.kind == "fusion_encoder" and is_r2d2(config):
        card_tags.append("r2d2")
    if config.get("similarity") == "token_wise":
        card_tags += ["filip", "wukong"]
    if adapter is not None:
        card_tags += ["peft", str(adapter.get("peft_type", "")).lower()]
    card_tags += list(tags)
    card_data = ModelCardData(
        language="zh",
        license=license,
        library_name="peft" if adapter is not None else "transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=list(dict.fromkeys(t for t in card_tags if t)),
        datasets=datasets or None,
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    context: dict[str, Any] = {
        "model_name": model_name,
        "repo_id": repo_id,
        "datasets": datasets,
        "hyperparameters": hyperparameters(training_args),
        "eval_rows": [
            {"key": r.metric_type, "name": r.metric_name, "split": r.dataset_split, "value": r.metric_value}
            for r in eval_results
        ],
        "eval_dataset": eval_dataset,
        "versions": _versions(include_peft=adapter is not None),
        "citations": citations_for(info.kind, config, adapter),
        "num_parameters": _human(info.num_parameters),
        "max_length": info.processor.get("max_length"),
    }
    if adapter is not None:
        targets = adapter.get("target_modules")
        context.update(
            peft_type=adapter.get("peft_type", "PEFT"),
            r=adapter.get("r"),
            alpha=adapter.get("lora_alpha"),
            dropout=adapter.get("lora_dropout"),
            use_dora=bool(adapter.get("use_dora")),
            target_modules=targets if isinstance(targets, str) else ", ".join(sorted(targets or [])),
            modules_to_save=list(adapter.get("modules_to_save") or []),
            base_model=bases[0] if bases else None,
            base_repo=bases[0] if bases else "BASE_MODEL_REPO_ID",
        )
        template = ADAPTER_TEMPLATE
    else:
        context.update(
            text_tower=_tower(config.get("text_config") or {}),
            vision_tower=_tower(config.get("vision_config") or {}),
            projection_dim=config.get("projection_dim"),
            similarity=config.get("similarity", "global"),
            token_reduction=config.get("token_reduction", "none"),
            lock_vision=bool(config.get("lock_vision")),
            base_model=bases,
            config=config,
        )
        template = FAMILY_TEMPLATES[config["model_type"]]
    content = (
        _environment()
        .get_template(template)
        .render(card_data=card_data.to_yaml(), zero_shot_prompt=DEFAULT_ZERO_SHOT_PROMPT, **context)
    )
    return ModelCard(content)


def write_model_card(folder: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the card of a saved folder (see `render_model_card`) into `folder/README.md`; returns its path.

    Overwrites an existing README.md: `save_pretrained` of PEFT writes a placeholder card there.
    """
    path = Path(folder) / "README.md"
    render_model_card(folder, **kwargs).save(path)
    return path
