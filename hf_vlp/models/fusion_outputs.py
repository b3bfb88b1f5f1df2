"""Outputs of the hf-vlp fusion encoders: gallery embeddings with token states, and the model outputs.

Shipped with saved models (Hub custom code): imports torch, transformers and sibling files only. Importable from
`modeling_fusion_encoder` as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .modeling_dual_encoder import DualEncoderOutput, tuple_with_tower_outputs
from .retrieval_core import RetrievalEmbeddings


__all__ = ["FusionEncoderForPreTrainingOutput", "FusionEncoderOutput", "FusionRetrievalEmbeddings"]


@dataclass
class FusionRetrievalEmbeddings(RetrievalEmbeddings):
    """A gallery item of a fusion model: the contrastive embedding plus what the cross encoders read.

    Args:
        embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): L2-normalised contrastive embedding.
        fusion_states (`torch.FloatTensor` of shape `(batch, tokens, tower_hidden_size)`): the tower's token states.
        fusion_mask (`torch.LongTensor` of shape `(batch, tokens)`): 1 for real tokens.
        bridge_states (`torch.FloatTensor` of shape `(batch, num_fusion_layers, tokens, tower_hidden_size)`,
            *optional*): the tower's top layer outputs, only with `use_bridges`.
    """

    fusion_states: torch.FloatTensor | None = None
    fusion_mask: torch.LongTensor | None = None
    bridge_states: torch.FloatTensor | None = None


@dataclass
class FusionEncoderOutput(DualEncoderOutput):
    """Contrastive (pre-fusion) output of [`FusionEncoderForRetrieval`]: the dual encoder's fields and meaning,
    so evaluation code, pipelines and the Space treat both families alike."""


@dataclass
class FusionEncoderForPreTrainingOutput(ModelOutput):
    """Output of [`FusionEncoderForPreTraining`]: each objective separately and their weighted sum.

    Args:
        loss (`torch.FloatTensor`): `sum(config.<term>_weight * <term>_loss)` over the computed terms.
        itc_loss (`torch.FloatTensor`, *optional*): image-text contrastive loss before fusion (momentum keys,
            queue and momentum distillation when enabled).
        itm_loss (`torch.FloatTensor`, *optional*): image-text matching cross-entropy, averaged over the cross
            encoders, on B positives and up to 2B in-batch hard negatives.
        mlm_loss (`torch.FloatTensor`, *optional*): masked language modelling conditioned on the image. The MLM
            heads (online and momentum) only run on the masked tokens, so no MLM logits are returned.
        target_distill_loss (`torch.FloatTensor`, *optional*): ITM soft cross-entropy against the momentum model.
        feature_distill_loss (`torch.FloatTensor`, *optional*): 1 - cosine of fused features to the momentum model's.
        logits_per_image (`torch.FloatTensor` of shape `(batch, batch)`): scaled in-batch contrastive similarity.
        logits_per_text (`torch.FloatTensor` of shape `(batch, batch)`): its transpose.
        text_embeds, image_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): normalised embeddings.
        itm_logits (`torch.FloatTensor` of shape `(3 * batch, 2)`): ITM logits of positives, then (text, negative
            image) pairs, then (negative text, image) pairs.
        itm_labels (`torch.LongTensor` of shape `(3 * batch,)`): 1, 0, or -100 for a row without a valid negative.
        text_model_output, vision_model_output: the online towers' own outputs (attentions and hidden states with
            `output_attentions` / `output_hidden_states`).
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    target_distill_loss: torch.FloatTensor | None = None
    feature_distill_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple_with_tower_outputs(self)
