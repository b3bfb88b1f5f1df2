"""Data files of the installed `cn-clip` package (OFA-Sys Chinese-CLIP), read at run time.

Chinese-CLIP's model architectures (`clip/model_configs/*.json`), its 21,128-token Chinese BERT vocabulary and its
Chinese ImageNet class names and prompt templates are what users coming from it need reproduced exactly. We never
copy them into this repository; they are read from the installed package. Only the package's location is looked
up (no `cn_clip.clip` import): that module imports torchvision at import time, which inference does not need.
Install it with `pip install --no-deps cn-clip` so pip does not pull torchvision, timm or a CUDA torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any


__all__ = [
    "CnClipNotInstalledError",
    "cn_clip_file",
    "cn_clip_imagenet_zero_shot",
    "cn_clip_model_config",
    "cn_clip_model_names",
    "cn_clip_vocab_file",
]

INSTALL_HINT = "pip install --no-deps cn-clip==1.6.0"


class CnClipNotInstalledError(ImportError):
    """The `cn-clip` package, whose files a feature reads, is not installed."""

    def __init__(self, feature: str):
        super().__init__(f"{feature} reads the installed cn-clip package, which is not installed: {INSTALL_HINT}")


@cache
def _installed_root() -> Path | None:
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_root(feature: str) -> Path:
    root = _installed_root()
    if root is None:
        raise CnClipNotInstalledError(feature)
    return root


def cn_clip_file(relative_path: str, feature: str = "this feature") -> Path:
    """Path of a file inside the installed `cn_clip` package; `feature` names the caller in the error message."""
    path = _package_root(feature) / relative_path
    if not path.is_file():
        raise CnClipNotInstalledError(f"{feature} (file cn_clip/{relative_path})")
    return path


def cn_clip_vocab_file() -> Path:
    """Chinese-CLIP's Chinese BERT WordPiece vocabulary (21,128 tokens, the one of bert-base-chinese)."""
    return cn_clip_file("clip/vocab.txt", "the bert-base-chinese tokenizer")


def cn_clip_model_names() -> tuple[list[str], list[str]]:
    """`(vision model names, text model names)` that the installed cn-clip ships configs for, sorted."""
    folder = _package_root("Chinese-CLIP checkpoint conversion") / "clip" / "model_configs"
    vision, text = [], []
    for path in sorted(folder.glob("*.json")):
        (vision if "vision_width" in json.loads(path.read_text(encoding="utf-8")) else text).append(path.stem)
    return vision, text


def cn_clip_model_config(name: str) -> dict[str, Any]:
    """One architecture JSON of cn-clip (`ViT-B-16`, `RoBERTa-wwm-ext-base-chinese` ...), as a dict.

    Raises `KeyError` naming the available models when `name` is not one of them.
    """
    vision, text = cn_clip_model_names()
    if name not in vision + text:
        raise KeyError(
            f"cn-clip has no model config {name!r}; vision models: {', '.join(vision)}; text models: {', '.join(text)}"
        )
    path = cn_clip_file(f"clip/model_configs/{name}.json", "Chinese-CLIP checkpoint conversion")
    return json.loads(path.read_text(encoding="utf-8"))


def cn_clip_imagenet_zero_shot() -> tuple[list[str], list[str]]:
    """Chinese-CLIP's 1,000 Chinese ImageNet class names and its prompt templates (with a `{}` placeholder).

    The module holds only literals and lambdas (no imports), so importing it is safe without torchvision; each
    template lambda is rendered with `"{}"` to get the format string it stands for.
    """
    _package_root("the imagenet-zh zero-shot preset")
    module = importlib.import_module("cn_clip.eval.imagenet_zeroshot_templates")
    return list(module.imagenet_classnames), [template("{}") for template in module.openai_imagenet_template]
