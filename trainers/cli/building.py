"""Building the model and processor a job's `ModelArguments` ask for (see `ModelArguments` for the sources)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


__all__ = ["build_model_and_processor", "default_text_length", "text_positions"]

from .checks import check_model_path
from .errors import RUNTIME, USAGE, UserError, check_max_length, closest_names
from .text_length import default_text_length, text_positions


logger = logging.getLogger(__name__)


_OVERRIDES_EXAMPLE = """--config-overrides '{"vision_patch_dropout": 0.5}'"""


def _config_overrides(model_args: Any) -> dict[str, Any]:
    if not model_args.config_overrides:
        return {}
    try:
        overrides = json.loads(model_args.config_overrides)
    except json.JSONDecodeError as error:
        raise UserError(
            f"--config-overrides {model_args.config_overrides!r} is not JSON ({error.msg}); quote it whole, with "
            f"double quotes around keys and strings: {_OVERRIDES_EXAMPLE}",
            USAGE,
        ) from error
    if not isinstance(overrides, dict):
        raise UserError(f"--config-overrides must be a JSON object, e.g. {_OVERRIDES_EXAMPLE}", USAGE)
    return overrides


def _check_override_keys(config_class: type, overrides: dict[str, Any]) -> None:
    """Refuse `--config-overrides` keys that `config_class` has no setting for: a config keeps any key silently, so a
    typo (`lock_visoin`) would be saved in config.json and change nothing."""
    if not overrides:
        return
    try:
        default = config_class()
    except Exception:  # a config that cannot be built without arguments: nothing to check against
        return
    known = set(default.to_dict())
    unknown = [key for key in overrides if key not in known and not hasattr(default, key)]
    if unknown:
        named = [f"{key} ({closest_names(key, known)})" if closest_names(key, known) else key for key in unknown]
        raise UserError(
            f"--config-overrides: {config_class.__name__} has no setting {', '.join(named)}; its settings are the "
            "keys of the model's config.json",
            USAGE,
        )


def _read_model_config(model_config: str) -> dict[str, Any]:
    """The values of `--model-config` (a config.json, or a folder holding one), or a one-line `UserError`."""
    path = Path(model_config)
    path = path / "config.json" if path.is_dir() else path
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"--model-config {model_config}: no such file", RUNTIME) from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--model-config {model_config}: not a readable JSON config ({error})", RUNTIME) from error
    if not isinstance(values, dict) or "model_type" not in values:
        raise UserError(
            f'--model-config {model_config}: no "model_type" key (e.g. "hf_vlp_dual_encoder" or '
            '"hf_vlp_fusion_encoder", with "text_config" and "vision_config")',
            USAGE,
        )
    return values


@contextlib.contextmanager
def _config_errors(source: str, overrides: dict[str, Any]) -> Iterator[None]:
    """A config's own validation (`ValueError`, e.g. a rate out of range) as one line naming where the values came
    from: the model source and, if any, `--config-overrides`."""
    try:
        yield
    except ValueError as error:
        origin = (
            f"{source} with --config-overrides {json.dumps(overrides, ensure_ascii=False)}" if overrides else source
        )
        raise UserError(f"invalid model config ({origin}): {error}", USAGE) from error


def _processor_for_config(
    config: Any, tokenizer: Any, max_length: int | None, vision_source: str | None = None
) -> Any:
    """A `VLPProcessor` matching a model config: the vision tower's image size (and mean/std when the tower's own
    image processor can be read), the given tokenizer."""
    from hf_vlp import VLPImageProcessor, VLPProcessor
    from hf_vlp.models.processing_vlp import DEFAULT_MAX_LENGTH

    size = getattr(config.vision_config, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    kwargs: dict[str, Any] = {"size": {"height": size, "width": size}}
    if vision_source is not None:
        from transformers import AutoImageProcessor

        try:
            tower_processor = AutoImageProcessor.from_pretrained(vision_source)
        except (OSError, ValueError):  # a tower without a preprocessor config keeps CLIP's mean/std
            tower_processor = None
        for key in ("image_mean", "image_std"):
            if getattr(tower_processor, key, None) is not None:
                kwargs[key] = list(getattr(tower_processor, key))
    return VLPProcessor(VLPImageProcessor(**kwargs), tokenizer, max_length=max_length or DEFAULT_MAX_LENGTH)


def _load_model_config(model: str, remote: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The config of `--model`: a folder, or a Hub id. A value that looks like a path is never looked up on the Hub,
    and a Hub id that cannot be loaded is one line naming both readings."""
    from transformers import AutoConfig

    check_model_path(model)
    local = os.path.expanduser(model)
    try:
        return AutoConfig.from_pretrained(local if os.path.isdir(local) else model, **remote, **overrides)
    except OSError as error:
        if os.path.isdir(local):
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"--model {model}: not a local folder, and not loadable as a Hub id: {reason}", RUNTIME
        ) from error


def _model_class(config: Any, pretraining: bool) -> Any:
    """`AutoModelForPreTraining` for training a family that has a separate pre-training class (fusion encoders:
    MLM head, momentum copy, queue), `AutoModel` otherwise (dual encoders, and evaluation)."""
    from transformers import AutoModel, AutoModelForPreTraining

    if pretraining:
        try:
            AutoModelForPreTraining._model_mapping[type(config)]
            return AutoModelForPreTraining
        except KeyError:
            pass
    return AutoModel


def build_model_and_processor(model_args: Any, pretraining: bool = False) -> tuple[Any, Any]:
    """The model and processor the arguments ask for (see `ModelArguments` for the sources and precedence).

    With `pretraining`, families with a pre-training class (fusion encoders) are built with it, so that their
    forward computes every objective; evaluation loads the inference class.
    """
    from transformers import AutoConfig, AutoProcessor

    from hf_vlp import DualEncoderConfig, DualEncoderModel, config_for_preset, load_tokenizer, processor_for_preset

    overrides = _config_overrides(model_args)
    hub = {"revision": model_args.revision} if model_args.revision else {}
    if model_args.model:
        logger.info("Loading model %s", model_args.model)
        remote = {"trust_remote_code": model_args.trust_remote_code, **hub}
        with _config_errors(f"--model {model_args.model}", overrides):
            config = _load_model_config(model_args.model, remote, overrides)
        _check_override_keys(type(config), overrides)
        model = _model_class(config, pretraining).from_pretrained(model_args.model, config=config, **remote)
        if model_args.tokenizer:
            processor = _processor_for_config(model.config, load_tokenizer(model_args.tokenizer, **hub), None)
        else:
            processor = AutoProcessor.from_pretrained(
                model_args.model, trust_remote_code=model_args.trust_remote_code, **hub
            )
    elif model_args.model_config:
        values = {**_read_model_config(model_args.model_config), **overrides}
        values.pop("auto_map", None)
        with _config_errors(f"--model-config {model_args.model_config}", overrides):
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        _check_override_keys(type(config), overrides)
        model = _model_class(config, pretraining).from_config(config)
        tokenizer = load_tokenizer(model_args.tokenizer or "builtin-chinese", **hub)
        processor = _processor_for_config(config, tokenizer, None)
    elif model_args.text_model or model_args.vision_model:
        if not (model_args.text_model and model_args.vision_model):
            raise UserError("--text-model and --vision-model go together", USAGE)
        _check_override_keys(DualEncoderConfig, overrides)
        model = DualEncoderModel.from_vision_text_pretrained(
            model_args.vision_model, model_args.text_model, hub_kwargs=hub, **overrides
        )
        tokenizer = load_tokenizer(model_args.tokenizer or model_args.text_model, **hub)
        processor = _processor_for_config(model.config, tokenizer, None, vision_source=model_args.vision_model)
    elif model_args.preset:
        with _config_errors(f"--preset {model_args.preset}", overrides):
            config = config_for_preset(model_args.preset, **overrides)
        _check_override_keys(type(config), overrides)
        model = _model_class(config, pretraining).from_config(config)
        processor = processor_for_preset(model_args.preset, tokenizer=model_args.tokenizer)
    else:
        raise UserError("choose a model with --preset, --model-config, --model, or --text-model/--vision-model", USAGE)
    check_max_length(model.config, model_args.max_length)
    processor.max_length = model_args.max_length or default_text_length(model.config, processor.max_length)
    return model, processor
