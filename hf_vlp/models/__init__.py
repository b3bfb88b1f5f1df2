"""Model definitions shipped with every saved hf-vlp model (flat: Hub custom code cannot hold sub-packages).

Files here import only torch, transformers, numpy, PIL and each other, so that `save_pretrained` can copy
them next to the weights and `trust_remote_code=True` can load them where hf-vlp is not installed.
"""

from .configuration_dual_encoder import DualEncoderConfig
from .configuration_fusion_encoder import FusionEncoderConfig
from .contrastive import gather_with_grad, image_text_contrastive_loss, token_wise_similarity
from .image_processing_vlp import InvalidImageError, VLPImageProcessor, sanitize_image
from .modeling_dual_encoder import DualEncoderModel, DualEncoderOutput, VLPPreTrainedModel
from .modeling_fusion_encoder import (
    FusionEncoderForPreTraining,
    FusionEncoderForPreTrainingOutput,
    FusionEncoderForRetrieval,
    FusionEncoderOutput,
    FusionRetrievalEmbeddings,
)
from .presets import list_presets, preset_info
from .processing_vlp import DEFAULT_MAX_LENGTH, DEFAULT_ZERO_SHOT_PROMPT, VLPProcessor
from .retrieval_core import RerankingModel, RetrievalEmbeddings, RetrievalModel


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_ZERO_SHOT_PROMPT",
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "FusionEncoderConfig",
    "FusionEncoderForPreTraining",
    "FusionEncoderForPreTrainingOutput",
    "FusionEncoderForRetrieval",
    "FusionEncoderOutput",
    "FusionRetrievalEmbeddings",
    "InvalidImageError",
    "RerankingModel",
    "RetrievalEmbeddings",
    "RetrievalModel",
    "VLPImageProcessor",
    "VLPPreTrainedModel",
    "VLPProcessor",
    "gather_with_grad",
    "image_text_contrastive_loss",
    "list_presets",
    "preset_info",
    "sanitize_image",
    "token_wise_similarity",
]
