"""Building the model and processor a job's `ModelArguments` ask for (see `ModelArguments` for the sources)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any


__all__ = ["DEFAULT_MAX_LENGTH", "build_model_and_processor", "text_positions"]

logger = logging.getLogger(__name__)

# Chinese-CLIP's context length: the default text length, unless the text tower has fewer positions.
DEFAULT_MAX_LENGTH = 52


def _config_overrides(model_args: Any) -> dict[str, Any]:
    if not model_args.config_overrides:
        return {}
    overrides = json.loads(model_args.config_overrides)
    if not isinstance(overrides, dict):
        raise SystemExit("hf-vlp: --config-overrides must be a JSON object")
    return overrides


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

    from hf_vlp import DualEncoderModel, config_for_preset, load_tokenizer, processor_for_preset

    overrides = _config_overrides(model_args)
    hub = {"revision": model_args.revision} if model_args.revision else {}
    if model_args.model:
        logger.info("Loading model %s", model_args.model)
        remote = {"trust_remote_code": model_args.trust_remote_code, **hub}
        config = AutoConfig.from_pretrained(model_args.model, **remote, **overrides)
        model = _model_class(config, pretraining).from_pretrained(model_args.model, config=config, **remote)
        if model_args.tokenizer:
            processor = _processor_for_config(model.config, load_tokenizer(model_args.tokenizer, **hub), None)
        else:
            processor = AutoProcessor.from_pretrained(
                model_args.model, trust_remote_code=model_args.trust_remote_code, **hub
            )
    elif model_args.model_config:
        path = Path(model_args.model_config)
        path = path / "config.json" if path.is_dir() else path
        values = {**json.loads(path.read_text(encoding="utf-8")), **overrides}
        values.pop("auto_map", None)
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        model = _model_class(config, pretraining).from_config(config)
        tokenizer = load_tokenizer(model_args.tokenizer or "builtin-chinese", **hub)
        processor = _processor_for_config(config, tokenizer, None)
    elif model_args.text_model or model_args.vision_model:
        if not (model_args.text_model and model_args.vision_model):
            raise SystemExit("hf-vlp: --text-model and --vision-model go together")
        model = DualEncoderModel.from_vision_text_pretrained(
            model_args.vision_model, model_args.text_model, hub_kwargs=hub, **overrides
        )
        tokenizer = load_tokenizer(model_args.tokenizer or model_args.text_model, **hub)
        processor = _processor_for_config(model.config, tokenizer, None, vision_source=model_args.vision_model)
    elif model_args.preset:
        config = config_for_preset(model_args.preset, **overrides)
        model = _model_class(config, pretraining).from_config(config)
        processor = processor_for_preset(model_args.preset, tokenizer=model_args.tokenizer)
    else:
        raise SystemExit(
            "hf-vlp: choose a model with --preset, --model-config, --model, or --text-model/--vision-model"
        )
    processor.max_length = _text_length(model.config, model_args.max_length, processor.max_length)
    return model, processor


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


def _text_length(config: Any, requested: int | None, processor_default: int | None) -> int:
    """The text length to tokenise to: `--max-length` if the tower can embed it, else min(default, positions).

    A longer explicit value is refused here, before any data is read: the tower would fail at step 0 with an index
    error deep inside its embedding layer.
    """
    positions = text_positions(config)
    if requested is not None:
        if positions is not None and requested > positions:
            raise SystemExit(
                f"hf-vlp: --max-length {requested} is longer than the text tower's {positions} positions; "
                f"use --max-length {positions} or less"
            )
        return requested
    default = processor_default or DEFAULT_MAX_LENGTH
    return min(default, positions) if positions is not None else default
