"""Model cards for saved and pushed hf-vlp models and adapters, rendered from the `model_cards/` Jinja templates.

A card is the Hub's contract with a reader: YAML metadata the Hub indexes (language, license, library, pipeline tag,
tags, datasets, base model, and a `model-index` with the trainer's measured results, which the Hub shows as an
evaluation widget), then prose a user needs before relying on the model: what it is, what it is for and not for, a
Chinese usage snippet that works without hf-vlp installed, how it was trained, how it scored, and what to cite.

Everything is read from the saved folder (or an in-memory model) and from the trainer's own result files
(`all_results.json` / `eval_results.json`), so the card states what was measured rather than what was intended.
Nothing secret is rendered: training arguments pass through a filter that drops tokens, credentials and local paths.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from .models.processing_vlp import DEFAULT_ZERO_SHOT_PROMPT


__all__ = [
    "CITATIONS",
    "ModelDescription",
    "describe",
    "eval_results_from_metrics",
    "load_results",
    "render_model_card",
    "write_model_card",
]

#: Templates per model family (the config's `model_type`), in the `model_cards` package.
FAMILY_TEMPLATES = {
    "hf_vlp_dual_encoder": "dual_encoder.md.j2",
    "hf_vlp_fusion_encoder": "fusion_encoder.md.j2",
}
ADAPTER_TEMPLATE = "adapter.md.j2"

#: BibTeX of the papers whose methods a model may use; `_citations` picks the applicable ones.
CITATIONS = {
    "clip": """@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and
               Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and
               Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2021}
}""",
    "chinese_clip": """@article{yang2022chineseclip,
  title   = {Chinese CLIP: Contrastive Vision-Language Pretraining in Chinese},
  author  = {Yang, An and Pan, Junshu and Lin, Junyang and Men, Rui and Zhang, Yichang and Zhou, Jingren and
             Zhou, Chang},
  journal = {arXiv preprint arXiv:2211.01335},
  year    = {2022}
}""",
    "wukong": """@inproceedings{gu2022wukong,
  title     = {Wukong: A 100 Million Large-scale Chinese Cross-modal Pre-training Benchmark},
  author    = {Gu, Jiaxi and Meng, Xiaojun and Lu, Guansong and Hou, Lu and Niu, Minzhe and Liang, Xiaodan and
               Yao, Lewei and Huang, Runhui and Zhang, Wei and Jiang, Xin and Xu, Chunjing and Xu, Hang},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS), Datasets and Benchmarks Track},
  year      = {2022}
}""",
    "filip": """@inproceedings{yao2022filip,
  title     = {FILIP: Fine-grained Interactive Language-Image Pre-Training},
  author    = {Yao, Lewei and Huang, Runhui and Hou, Lu and Lu, Guansong and Niu, Minzhe and Xu, Hang and
               Liang, Xiaodan and Li, Zhenguo and Jiang, Xin and Xu, Chunjing},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "lit": """@inproceedings{zhai2022lit,
  title     = {LiT: Zero-Shot Transfer with Locked-image text Tuning},
  author    = {Zhai, Xiaohua and Wang, Xiao and Mustafa, Basil and Steiner, Andreas and Keysers, Daniel and
               Kolesnikov, Alexander and Beyer, Lucas},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}""",
    "albef": """@inproceedings{li2021albef,
  title     = {Align before Fuse: Vision and Language Representation Learning with Momentum Distillation},
  author    = {Li, Junnan and Selvaraju, Ramprasaath R. and Gotmare, Akhilesh Deepak and Joty, Shafiq and
               Xiong, Caiming and Hoi, Steven},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}""",
    "r2d2": """@article{xie2022zero,
  title   = {Zero and R2D2: A Large-scale Chinese Cross-modal Benchmark and A Vision-Language Framework},
  author  = {Xie, Chunyu and Cai, Heng and Li, Jincheng and Kong, Fanjing and Wu, Xiaoyu and Song, Jianfei and
             Morimitsu, Henrique and Yao, Lin and Wang, Dexin and Zhang, Xiangzheng and Leng, Dawei and
             Zhang, Baochang and Ji, Xiangyang and Deng, Yafeng},
  journal = {arXiv preprint arXiv:2205.03860},
  year    = {2022}
}""",
    "lora": """@inproceedings{hu2022lora,
  title     = {LoRA: Low-Rank Adaptation of Large Language Models},
  author    = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and
               Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "dora": """@inproceedings{liu2024dora,
  title     = {DoRA: Weight-Decomposed Low-Rank Adaptation},
  author    = {Liu, Shih-Yang and Wang, Chien-Yi and Yin, Hongxu and Molchanov, Pavlo and Wang, Yu-Chiang Frank and
               Cheng, Kwang-Ting and Chen, Min-Hung},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024}
}""",
}

# Metric keys the trainer reports (after the `eval_` / `test_` prefix and an optional qualifier such as a dataset
# name or `rerank`): retrieval recalls (hf_vlp.retrieval.retrieval_recall) and zero-shot accuracy.
_METRIC = re.compile(
    r"^(?P<split>eval|test)_(?:(?P<qualifier>[\w\-]+?)_)?"
    r"(?P<metric>(?:i2t|t2i)_R@\d+|i2t_mean|t2i_mean|mean_recall|zero_shot_top\d+)$"
)
_SPLITS = {"eval": "validation", "test": "test"}

# Training arguments worth a reader's attention; hf-vlp's own arguments (fields that `TrainingArguments` lacks) are
# shown too. Everything else (logging, saving, paths, hub settings) is noise, or private.
_HYPERPARAMETER_KEYS = (
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
    "gradient_checkpointing",
)
_PRIVATE_KEY = re.compile(r"(token|secret|password|passwd|credential|api_key|auth)", re.IGNORECASE)
_PATH_KEY = re.compile(r"(_dir|_path|_file|_url|^output|^logging|^hub_|^push_to_hub|^report_to$|^run_name$)")


# ---------------------------------------------------------------------------------------------- reading a model


@dataclasses.dataclass
class ModelDescription:
    """What a card needs to know about a model or adapter, read from a folder or from memory."""

    kind: str  # a family template name's stem ("dual_encoder", "fusion_encoder") or "adapter"
    config: dict[str, Any]  # the model config (for adapters: the base's, when known, else {})
    adapter_config: dict[str, Any] | None = None
    num_parameters: int | None = None
    processor: dict[str, Any] = dataclasses.field(default_factory=dict)
    folder: Path | None = None


def _read_json(path: Path) -> dict[str, Any] | None:
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
    index = _read_json(folder / f"{stem}.safetensors.index.json")
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
        **(_read_json(folder / "processor_config.json") or {}),
        **(_read_json(folder / "preprocessor_config.json") or {}),
    }
    adapter_config = _read_json(folder / "adapter_config.json")
    if adapter_config is not None:
        return ModelDescription(
            kind="adapter",
            config={},
            adapter_config=adapter_config,
            num_parameters=_folder_parameters(folder, "adapter_model"),
            processor=processor,
            folder=folder,
        )
    config = _read_json(folder / "config.json")
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
            adapter_config=json.loads(json.dumps(adapter_config, default=_jsonable)),
            num_parameters=sum(t.numel() for t in stored.values()),
        )
    config = model.config.to_dict()
    return ModelDescription(
        kind=_kind(config), config=config, num_parameters=sum(p.numel() for p in model.parameters())
    )


def _jsonable(value: Any) -> Any:
    """Sets (PEFT keeps `target_modules` lists as sets) and enums as JSON."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return getattr(value, "value", str(value))


# ---------------------------------------------------------------------------------------------- results and args


def load_results(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The Trainer's metrics saved in `folder`: `all_results.json`, else `eval_results.json`, else None."""
    for name in ("all_results.json", "eval_results.json"):
        data = _read_json(Path(folder) / name)
        if data is not None:
            return data
    return None


def _metric_label(qualifier: str | None, metric: str) -> str:
    if metric.startswith(("i2t_R@", "t2i_R@")):
        direction = "image→text" if metric.startswith("i2t") else "text→image"
        label = f"{direction} R@{metric.split('@')[1]}"
    elif metric in ("i2t_mean", "t2i_mean"):
        label = f"{'image→text' if metric.startswith('i2t') else 'text→image'} mean recall"
    elif metric == "mean_recall":
        label = "mean recall"
    else:
        label = f"zero-shot top-{metric.removeprefix('zero_shot_top')} accuracy"
    return f"{label} ({qualifier})" if qualifier else label


def eval_results_from_metrics(metrics: Mapping[str, Any], dataset: str) -> list[EvalResult]:
    """The retrieval and zero-shot metrics of a Trainer result dict as `model-index` entries.

    `metric_type` is the trainer's key without its split prefix (e.g. `i2t_R@1`, `mean_recall`), so the numbers
    read back from a card map one-to-one onto what the trainer logged. Loss, runtime and throughput are left out.
    """
    results = []
    for key, value in metrics.items():
        match = _METRIC.match(key)
        if match is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric = match["metric"]
        zero_shot = metric.startswith("zero_shot")
        qualifier = match["qualifier"]
        results.append(
            EvalResult(
                task_type="zero-shot-image-classification" if zero_shot else "image-text-retrieval",
                task_name="Zero-shot image classification" if zero_shot else "Image-text retrieval",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=_SPLITS[match["split"]],
                metric_type=f"{qualifier}_{metric}" if qualifier else metric,
                metric_name=_metric_label(qualifier, metric),
                metric_value=float(value),
            )
        )
    return results


def _hyperparameters(training_args: Any) -> list[tuple[str, str]]:
    """Reader-relevant, non-secret training arguments from a `TrainingArguments` (or subclass) or a mapping."""
    if training_args is None:
        return []
    from transformers import TrainingArguments

    if dataclasses.is_dataclass(training_args):
        values = {f.name: getattr(training_args, f.name, None) for f in dataclasses.fields(training_args)}
    else:
        values = dict(training_args)
    base_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    rows = []
    for key, value in values.items():
        if key not in _HYPERPARAMETER_KEYS and key in base_fields:
            continue
        if value is None or value == "" or _PRIVATE_KEY.search(key) or _PATH_KEY.search(key):
            continue
        if key == "max_steps" and value == -1:
            continue
        value = getattr(value, "value", value)  # enums (lr_scheduler_type, optim)
        if not isinstance(value, (str, int, float, bool, list, tuple)):
            continue
        rows.append((key, str(list(value)) if isinstance(value, (list, tuple)) else str(value)))
    return rows


# ---------------------------------------------------------------------------------------------- rendering


def _versions(include_peft: bool) -> list[tuple[str, str]]:
    names = ["hf-vlp", "transformers", "torch", "huggingface_hub", "safetensors"] + (["peft"] if include_peft else [])
    versions = []
    for name in names:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _citations(kind: str, config: Mapping[str, Any], adapter_config: Mapping[str, Any] | None) -> list[str]:
    keys = ["clip", "chinese_clip"]
    if config.get("similarity") == "token_wise":
        keys += ["filip", "wukong"]
    if config.get("lock_vision") or config.get("lock_text"):
        keys.append("lit")
    if kind == "fusion_encoder":
        keys.append("albef")
        if _is_r2d2(config):
            keys.append("r2d2")
    if adapter_config is not None and adapter_config.get("peft_type") == "LORA":
        keys.append("lora")
        if adapter_config.get("use_dora"):
            keys.append("dora")
    return [CITATIONS[key] for key in dict.fromkeys(keys)]


def _is_r2d2(config: Mapping[str, Any]) -> bool:
    """R2D2's ingredients: a second (image-query) cross encoder, or its target- / feature-guided distillation."""
    return (
        config.get("fusion_mode") == "two_way"
        or bool(config.get("target_distill_weight"))
        or bool(config.get("feature_distill_weight"))
    )


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


def _is_hub_id(value: Any) -> bool:
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
        results = _read_json(Path(results))
        if results is None:
            raise FileNotFoundError(f"no results file at {results}")
    elif results is None and info.folder is not None:
        results = load_results(info.folder)
    datasets = list(datasets or [])
    adapter = info.adapter_config
    if base_model is None and adapter is not None and _is_hub_id(adapter.get("base_model_name_or_path")):
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
    if info.kind == "fusion_encoder" and _is_r2d2(config):
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
        "hyperparameters": _hyperparameters(training_args),
        "eval_rows": [
            {"key": r.metric_type, "name": r.metric_name, "split": r.dataset_split, "value": r.metric_value}
            for r in eval_results
        ],
        "eval_dataset": eval_dataset,
        "versions": _versions(include_peft=adapter is not None),
        "citations": _citations(info.kind, config, adapter),
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
