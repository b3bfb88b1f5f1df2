"""Zero-shot classification the way Chinese-CLIP and ELEVATER report it: prompt-template ensembles.

Each class is described by several prompts (`{}的照片。`, `一张{}的低分辨率照片。` ...); its class embedding is the
normalised mean of the normalised prompt embeddings (CLIP's "prompt ensembling", Chinese-CLIP's
`zero_shot_classifier`). Published Chinese zero-shot numbers use these ensembles, so a single prompt is not
comparable with them. Class names and templates come from JSON / TXT files, or from a preset read from the
installed cn-clip package (`imagenet-zh`: its 1,000 Chinese ImageNet names and its templates).

`TemplateEnsembleZeroShotPipeline` is transformers' zero-shot-image-classification pipeline with
`hypothesis_template` accepting a list of templates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import ZeroShotImageClassificationPipeline

from .cn_clip_assets import cn_clip_imagenet_zero_shot
from .models.processing_vlp import DEFAULT_ZERO_SHOT_PROMPT


__all__ = [
    "ZERO_SHOT_PRESETS",
    "TemplateEnsembleZeroShotPipeline",
    "ZeroShotFileError",
    "class_prompts",
    "load_class_names",
    "load_templates",
    "resolve_zero_shot_protocol",
    "template_ensemble_scores",
    "zero_shot_preset",
]

ZERO_SHOT_PRESETS = ("imagenet-zh",)


class ZeroShotFileError(ValueError):
    """A class-name or template file, or a zero-shot preset, that cannot be used; the message names it and the
    problem."""


def _read_entries(path: str | os.PathLike, what: str) -> list[str]:
    """Strings of a JSON list (or `{"<what>": [...]}`) or of a text file (one per line, blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ZeroShotFileError(f"{what} file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ZeroShotFileError(f"{what} file {path} is not valid JSON: {error}") from error
        if isinstance(data, dict) and isinstance(data.get(what), list):
            data = data[what]
        if not isinstance(data, list) or not all(isinstance(entry, str) for entry in data):
            raise ZeroShotFileError(f"{what} file {path} must hold a JSON list of strings (or {{{what!r}: [...]}})")
        entries = [entry.strip() for entry in data]
    else:
        entries = [line.strip() for line in text.splitlines()]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise ZeroShotFileError(f"{what} file {path} holds no {what}")
    return entries


def load_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, in label-index order, from a JSON list / `{"classes": [...]}` or a TXT file (one per line)."""
    names = _read_entries(path, "classes")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ZeroShotFileError(f"classes file {path} repeats class names: {duplicates[:5]}")
    return names


def load_templates(path: str | os.PathLike) -> list[str]:
    """Prompt templates, each with one `{}` for the class name, from a JSON list / `{"templates": [...]}` or TXT."""
    templates = _read_entries(path, "templates")
    bad = [template for template in templates if template.count("{}") != 1]
    if bad:
        raise ZeroShotFileError(f"templates file {path}: every template needs exactly one '{{}}', not {bad[:3]}")
    return templates


def zero_shot_preset(name: str) -> tuple[list[str], list[str]]:
    """`(class names, templates)` of a named benchmark; `imagenet-zh` reads the installed cn-clip package."""
    if name == "imagenet-zh":
        return cn_clip_imagenet_zero_shot()
    raise ZeroShotFileError(f"unknown zero-shot preset {name!r}; available: {', '.join(ZERO_SHOT_PRESETS)}")


def resolve_zero_shot_protocol(
    classes_file: str | os.PathLike | None = None,
    templates_file: str | os.PathLike | None = None,
    preset: str | None = None,
) -> tuple[list[str] | None, list[str] | None]:
    """`(class names, templates)` from a preset and/or files (a file overrides the preset's part); None where
    neither gives one (the classes then come from the data's labels, the template from the default prompt)."""
    class_names, templates = zero_shot_preset(preset) if preset else (None, None)
    if classes_file:
        class_names = load_class_names(classes_file)
    if templates_file:
        templates = load_templates(templates_file)
    return class_names, templates


def class_prompts(class_names: Sequence[str], templates: str | Sequence[str]) -> list[str]:
    """Every template filled with every class name, class-major (class 0's templates first), as
    `template_ensemble_scores` expects them."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    return [template.format(name) for name in class_names for template in templates]


def template_ensemble_scores(model, image, text, num_templates: int) -> torch.Tensor:
    """Unscaled (images, classes) scores of encoded images against class-major encoded prompts.

    `image` / `text` are what `model.encode_image` / `model.encode_text` return. With global embeddings a class is
    the normalised mean of its normalised prompt embeddings (Chinese-CLIP's `zero_shot_classifier`); token-wise
    (FILIP) models have no single class embedding, so there a class scores the mean of its prompts' similarities.
    """
    num_prompts = text.embeds.shape[0]
    if num_prompts % num_templates:
        raise ValueError(f"{num_prompts} prompts are not a whole number of classes x {num_templates} templates")
    if getattr(model.config, "similarity", "global") == "token_wise":
        scores = model.similarity(image, text)[0]
        return scores.view(scores.shape[0], -1, num_templates).mean(dim=-1)
    prompts = F.normalize(text.embeds.float(), dim=-1).view(-1, num_templates, text.embeds.shape[-1])
    classes = F.normalize(prompts.mean(dim=1), dim=-1)
    return F.normalize(image.embeds.float(), dim=-1) @ classes.t()


class TemplateEnsembleZeroShotPipeline(ZeroShotImageClassificationPipeline):
    """transformers' zero-shot image classification, with `hypothesis_template` a template or a list of them.

    ```python
    >>> from transformers import pipeline
    >>> classifier = pipeline(
    ...     "zero-shot-image-classification", model="converted", pipeline_class=TemplateEnsembleZeroShotPipeline
    ... )
    >>> classifier(image, candidate_labels=["猫", "狗"], hypothesis_template=["一张{}的照片。", "{}的特写照片。"])
    ```

    Scores are the softmax over classes of the model's logit scale times the ensemble scores of
    `template_ensemble_scores`; with one template they equal the stock pipeline's.
    """

    def preprocess(self, image, candidate_labels=None, hypothesis_template=DEFAULT_ZERO_SHOT_PROMPT, **kwargs):
        templates = [hypothesis_template] if isinstance(hypothesis_template, str) else list(hypothesis_template)
        if not templates:
            raise ValueError("hypothesis_template must be a template or a non-empty list of templates")
        inputs = super().preprocess(image, class_prompts(candidate_labels, templates), "{}", **kwargs)
        inputs["candidate_labels"] = list(candidate_labels)
        inputs["num_templates"] = len(templates)
        return inputs

    def _forward(self, model_inputs):
        candidate_labels = model_inputs.pop("candidate_labels")
        num_templates = model_inputs.pop("num_templates")
        text_inputs = model_inputs.pop("text_inputs")[0]
        text_inputs = text_inputs if "input_ids" in text_inputs else text_inputs[0]  # batched: one more level
        image = self.model.encode_image(pixel_values=model_inputs["pixel_values"])
        text = self.model.encode_text(**text_inputs)
        scores = template_ensemble_scores(self.model, image, text, num_templates)
        return {"candidate_labels": candidate_labels, "logits": self.model.get_logit_scale() * scores}
