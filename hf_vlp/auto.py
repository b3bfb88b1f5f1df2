"""Registration with transformers' Auto classes, in-process and for Hub custom code.

In-process registration makes `AutoModel.from_pretrained(folder)` work wherever `hf_vlp` is imported;
`register_for_auto_class` makes `save_pretrained` write `auto_map` and copy the model code into the folder,
so `trust_remote_code=True` works where hf-vlp is not installed.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    PreTrainedConfig,
    PreTrainedModel,
)

from .models import (
    DualEncoderConfig,
    DualEncoderModel,
    FusionEncoderConfig,
    FusionEncoderForPreTraining,
    FusionEncoderForRetrieval,
    VLPImageProcessor,
    VLPProcessor,
)


__all__ = ["register_model_family"]


def register_model_family(
    config_class: type[PreTrainedConfig],
    model_class: type[PreTrainedModel],
    extra_auto_classes: tuple = (),
) -> None:
    """Register one family (config + main model + the shared processor) with every Auto class it serves."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    for auto_class in extra_auto_classes:
        auto_class.register(config_class, model_class, exist_ok=True)
    AutoImageProcessor.register(config_class, image_processor_classes={"pil": VLPImageProcessor}, exist_ok=True)
    AutoProcessor.register(config_class, VLPProcessor, exist_ok=True)
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")


VLPImageProcessor.register_for_auto_class("AutoImageProcessor")
VLPProcessor.register_for_auto_class("AutoProcessor")
register_model_family(DualEncoderConfig, DualEncoderModel, (AutoModelForZeroShotImageClassification,))
# Fusion family: AutoModel gives the inference model (what evaluation, pipelines and the Space load; a
# pre-training checkpoint loads into it without its momentum copy, queue and MLM head), AutoModelForPreTraining
# the training model. Both are written into every saved folder's auto_map.
register_model_family(FusionEncoderConfig, FusionEncoderForRetrieval, (AutoModelForZeroShotImageClassification,))
AutoModelForPreTraining.register(FusionEncoderConfig, FusionEncoderForPreTraining, exist_ok=True)
FusionEncoderForPreTraining.register_for_auto_class("AutoModelForPreTraining")
