"""The hf-vlp dual encoder: any text tower + any vision tower, projections, contrastive loss.

CLIP / Chinese-CLIP global similarity, Wukong's token-wise (FILIP) late interaction with optional token
reduction, and locked-image / locked-text tuning (LiT). The towers' features, the retrieval contract
(`encode_*`, `similarity`) and the contrastive `forward` and loss are shared with the fusion encoder's contrastive
stage in `modeling_base.py`; this file adds what is the dual encoder's own. Shipped with saved models (Hub custom
code): imports torch, transformers and sibling files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_dual_encoder import DualEncoderConfig
from .contrastive import token_wise_similarity
from .modeling_base import VLPPreTrainedModel
from .patch_dropout import attach_patch_dropout
from .retrieval_core import RetrievalEmbeddings
from .towers import build_tower, lock_tower, vision_width


__all__ = [
    "DualEncoderOutput",
    "RetrievalEmbeddings",
    "TokenReducer",
    "VLPPreTrainedModel",
    "DualEncoderModel",
]


@dataclass
class DualEncoderOutput(ModelOutput):
    """Output of [`DualEncoderModel`], with CLIP's field names so pipelines and user code work unchanged.

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*): contrastive loss, when `return_loss=True`.
        itc_loss (`torch.FloatTensor`, *optional*): the same image-text contrastive term, named per objective.
        logits_per_image (`torch.FloatTensor` of shape `(image_batch, text_batch)`): scaled similarity.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch, image_batch)`): scaled similarity
            (with token-wise similarity this is the text-to-image direction, not a transpose).
        text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): normalised text embeddings.
        image_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): normalised image embeddings.
        text_model_output, vision_model_output: the towers' own outputs.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple_with_tower_outputs(self)


def tuple_with_tower_outputs(output: ModelOutput) -> tuple[Any, ...]:
    """`output.to_tuple()` where the towers' own outputs (`text_model_output`, `vision_model_output`) become tuples
    too, as transformers' CLIP output does."""
    return tuple(
        output[k] if k not in ("text_model_output", "vision_model_output") else getattr(output, k).to_tuple()
        for k in output
    )


class TokenReducer(nn.Module):
    """Pool a variable number of tokens into `num_tokens` learned mixtures (TokenLearner, as in Wukong).

    Each output token is a softmax-weighted average of the real input tokens with its own learned scoring
    head, so the reduction is differentiable and the late interaction costs `num_tokens` instead of all
    tokens.
    """

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.score = nn.Linear(dim, num_tokens)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(tokens).masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(tokens.dtype).min)
        weights = scores.softmax(dim=1)  # (B, L, K): a distribution over the real tokens per output token
        reduced = torch.einsum("blk,bld->bkd", weights, tokens)
        return reduced, mask.new_ones(reduced.shape[:2])


def keep_largest_norm_tokens(tokens: torch.Tensor, mask: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `keep` real tokens with the largest norm (parameter-free token reduction)."""
    if tokens.shape[1] <= keep:
        return tokens, mask
    norms = tokens.norm(dim=-1).masked_fill(mask == 0, -1.0)
    index = norms.topk(keep, dim=1).indices
    kept = tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return kept, mask.gather(1, index)


class DualEncoderModel(VLPPreTrainedModel):
    """Dual encoder for Chinese image-text retrieval and zero-shot classification.

    `get_text_features` / `get_image_features` follow transformers 5's CLIP: they return the tower's
    `BaseModelOutputWithPooling` whose `pooler_output` is the *projected, unnormalised* embedding.
    `encode_text` / `encode_image` give what a retrieval gallery stores (normalised, plus token embeddings
    for token-wise similarity) and `similarity` scores two such sets.

    Example:

    ```python
    >>> import torch
    >>> from hf_vlp import DualEncoderConfig, DualEncoderModel
    >>> model = DualEncoderModel(DualEncoderConfig.from_preset("tiny"))
    >>> out = model(input_ids=torch.tensor([[101, 2000, 102]]), pixel_values=torch.randn(1, 3, 64, 64))
    >>> out.logits_per_image.shape
    torch.Size([1, 1])
    ```
    """

    config_class = DualEncoderConfig
    base_model_prefix = "dual_encoder"
    supports_zero_shot_pipeline = True
    _output_class = DualEncoderOutput

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        self.text_model = build_tower(config.text_config, drop_pooler=True)
        self.vision_model = build_tower(config.vision_config, drop_pooler=config.vision_pooling != "pooler")
        text_dim = config.text_config.hidden_size
        vision_dim = vision_width(config.vision_config)
        self.text_projection = nn.Linear(text_dim, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(vision_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        # SigLIP's learned bias of the sigmoid loss; no weight decay (like logit_scale).
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.contrastive_loss == "sigmoid" else None
        )
        if config.vision_patch_dropout:
            attach_patch_dropout(self.vision_model, config)
        if config.similarity == "token_wise" and config.token_reduction == "learned":
            self.image_token_reducer = TokenReducer(config.projection_dim, config.image_tokens_kept)
            self.text_token_reducer = TokenReducer(config.projection_dim, config.text_tokens_kept)
        self.post_init()
        self.apply_locks()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self and self.logit_bias is not None:
            init.constant_(self.logit_bias, self.config.logit_bias_init_value)

    # ---------------------------------------------------------------- trainability (LiT)
    def apply_locks(self) -> None:
        """Freeze the towers the config locks (LiT); called at init and again after every load."""
        if self.config.lock_vision:
            lock_tower(self.vision_model, self.config.lock_vision_unlocked_layers)
        if self.config.lock_text:
            lock_tower(self.text_model, self.config.lock_text_unlocked_layers)

    def _after_load(self, missing_keys: list[str]) -> None:
        self.apply_locks()

    def train(self, mode: bool = True):
        """Keep fully locked towers in eval mode: LiT's frozen tower must not apply dropout or update stats."""
        super().train(mode)
        for locked, unlocked, tower in (
            (self.config.lock_vision, self.config.lock_vision_unlocked_layers, self.vision_model),
            (self.config.lock_text, self.config.lock_text_unlocked_layers, self.text_model),
        ):
            if locked and unlocked == 0:
                tower.eval()
        return self

    # ---------------------------------------------------------------- retrieval
    def _contrastive_embeddings(
        self, features: BaseModelOutputWithPooling, token_mask: torch.Tensor | None, is_image: bool
    ) -> RetrievalEmbeddings:
        """Normalised embeddings, plus normalised (and optionally reduced) token embeddings for token-wise
        similarity: what the loss compares and what a gallery stores."""
        embeds = F.normalize(features.pooler_output, dim=-1)
        if self.config.similarity != "token_wise":
            return RetrievalEmbeddings(embeds=embeds)
        projection = self.visual_projection if is_image else self.text_projection
        tokens = projection(features.last_hidden_state)
        mask = token_mask if token_mask is not None else tokens.new_ones(tokens.shape[:2], dtype=torch.long)
        keep = self.config.image_tokens_kept if is_image else self.config.text_tokens_kept
        if self.config.token_reduction == "learned":
            reducer = self.image_token_reducer if is_image else self.text_token_reducer
            tokens, mask = reducer(tokens, mask)
        elif self.config.token_reduction == "norm" and keep is not None:
            tokens, mask = keep_largest_norm_tokens(tokens, mask, keep)
        return RetrievalEmbeddings(embeds=embeds, token_embeds=F.normalize(tokens, dim=-1), token_mask=mask)

    def similarity(self, image: RetrievalEmbeddings, text: RetrievalEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled similarity of every image with every text: `(sim_i2t, sim_t2i)`, both (images, texts).

        Global similarity is the cosine (the two are equal); token-wise is FILIP's two directions.
        """
        if self.config.similarity == "token_wise":
            return token_wise_similarity(
                image.token_embeds,
                image.token_mask,
                text.token_embeds,
                text.token_mask,
                chunk_size=self.config.token_similarity_chunk_size,
            )
        return super().similarity(image, text)

    def match_score(self, image: RetrievalEmbeddings, text: RetrievalEmbeddings) -> torch.Tensor:
        """Similarity of each aligned (image[i], text[i]) pair (a side of one is broadcast): what
        `match_probability` calibrates."""
        scores = self.similarity(image, text)[0]
        if scores.shape[0] == 1 or scores.shape[1] == 1:
            return scores.flatten()
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"cannot pair {scores.shape[0]} images with {scores.shape[1]} texts")
        return scores.diagonal()

    # Public on the dual encoder: gradient caching recomputes the loss from cached embeddings through it
    # (`trainers.grad_cache.ContrastiveModel`). The fusion models keep it private: their loss is not only this.
    contrastive_loss = VLPPreTrainedModel._contrastive_loss
