"""The hf-vlp fusion encoders: uni-modal towers aligned by ITC, fused by cross-attention for ITM and MLM.

ALBEF (one cross encoder, text attends to image; momentum model, feature queue, momentum distillation),
R2D2 (a second, image-to-text cross encoder; target- and feature-guided distillation), GRIT-VLP (hardest
in-batch negatives, larger MLM ratio) and BridgeTower-style bridges, behind two classes:

- [`FusionEncoderForRetrieval`]: inference. The dual encoder's retrieval API (`encode_text`, `encode_image`,
  `similarity`, `get_*_features`, `logits_per_image`) for the contrastive first stage, plus cross-encoder
  scoring (`itm_score`, `rerank_scores`) and two-stage ranking (`rank`). Registered for `AutoModel`.
- [`FusionEncoderForPreTraining`]: the same model plus the MLM head, the momentum (EMA) copy and the queue;
  `forward` returns every loss term and their weighted sum. Registered for `AutoModelForPreTraining`.

Both share parameter names, so either loads the other's checkpoint. Shipped with saved models (Hub custom
code): imports torch, transformers and sibling files only.

Split by role: the outputs are in `fusion_outputs.py`, the pre-training objective steps in `fusion_pretraining.py`
(all still importable from here). This file stays over ~450 lines because it holds both model classes: every
saved folder's `auto_map` names them as `modeling_fusion_encoder.<class>`, so they must stay in this module for
saved models to reload.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .configuration_fusion_encoder import FusionEncoderConfig
from .contrastive import image_text_contrastive_loss
from .fusion_layers import CrossEncoderOutput, CrossModalEncoder, MaskedLMHead
from .fusion_objectives import ema_update_, ring_buffer_enqueue_
from .fusion_outputs import FusionEncoderForPreTrainingOutput, FusionEncoderOutput, FusionRetrievalEmbeddings
from .fusion_pretraining import FusionPreTrainingObjectives, _PreTrainingBatch
from .modeling_dual_encoder import ZERO_SHOT_AUTO_CLASS, DualEncoderModel, VLPPreTrainedModel
from .retrieval_core import (
    RetrievalEmbeddings,
    blockwise_topk,
    gather_contrastive_batch,
    parse_combine,
    rerank_topk,
)
from .towers import build_tower, present, text_tower_features, vision_tower_features, vision_width


__all__ = [
    "FusionEncoderForPreTraining",
    "FusionEncoderForPreTrainingOutput",
    "FusionEncoderForRetrieval",
    "FusionEncoderOutput",
    "FusionRetrievalEmbeddings",
]

logger = logging.get_logger(__name__)

MOMENTUM_SUFFIX = "_m"
# Gallery rows scored at once by `rank`'s first stage: bounds its score buffer to (queries x 16k) on any gallery.
_RANK_CHUNK_SIZE = 16384


class FusionEncoderForRetrieval(VLPPreTrainedModel):
    """Fusion encoder for two-stage image-text retrieval: contrastive top-k, then cross-encoder re-ranking.

    The contrastive half has the dual encoder's API (a [`DualEncoderModel`] and this class are interchangeable
    for first-stage retrieval and zero-shot classification); `rerank_scores` / `itm_score` score pairs with the
    cross encoder(s) and `rank` runs both stages for a batch of queries against a precomputed gallery.

    Example:

    ```python
    >>> import torch
    >>> from hf_vlp import FusionEncoderConfig, FusionEncoderForRetrieval
    >>> model = FusionEncoderForRetrieval(FusionEncoderConfig.from_preset("tiny-fusion")).eval()
    >>> images = model.encode_image(torch.randn(4, 3, 64, 64))
    >>> texts = model.encode_text(torch.tensor([[2, 900, 901, 3]] * 6))
    >>> scores, indices = model.rank(texts, images, query_modality="text", k=3)
    >>> indices.shape
    torch.Size([6, 3])
    ```
    """

    config_class = FusionEncoderConfig
    base_model_prefix = "fusion_encoder"
    supports_zero_shot_pipeline = True
    _no_split_modules = ["FusionLayer"]
    # Fusion masks are additive (B, 1, 1, L) tensors with queries and keys of different lengths; flash kernels
    # want unpadded sequences of one length, so flash attention is refused instead of silently mis-masked.
    _supports_flash_attn = False
    # A pre-training checkpoint also holds the momentum model, the queue and the MLM head: not needed here.
    _keys_to_ignore_on_load_unexpected = [r"^[a-z_]+_m\.", r"^mlm_head\.", r"^(image|text|id)_queue$", r"^queue_ptr$"]

    def __init__(self, config: FusionEncoderConfig):
        super().__init__(config)
        self._build_modules()
        self.post_init()

    def _build_modules(self) -> None:
        """Create the sub-modules (before `post_init`); subclasses add theirs after calling this."""
        self._build_encoders(suffix="")
        self.logit_scale = nn.Parameter(torch.tensor(self.config.logit_scale_init_value))

    def _build_encoders(self, suffix: str) -> None:
        """Towers, contrastive projections and cross encoder(s), named `<name><suffix>` (the momentum copy
        is the same set with suffix `_m`)."""
        config = self.config
        text_size = config.text_config.hidden_size
        vision_size = vision_width(config.vision_config)
        setattr(self, "text_model" + suffix, build_tower(config.text_config, drop_pooler=True))
        vision_model = build_tower(config.vision_config, drop_pooler=config.vision_pooling != "pooler")
        setattr(self, "vision_model" + suffix, vision_model)
        setattr(self, "text_projection" + suffix, nn.Linear(text_size, config.projection_dim, bias=False))
        setattr(self, "visual_projection" + suffix, nn.Linear(vision_size, config.projection_dim, bias=False))
        # R2D2's text-image cross encoder (ALBEF's only one): text tokens query the image tokens.
        setattr(self, "text_fusion" + suffix, CrossModalEncoder(config, text_size, vision_size))
        if config.fusion_mode == "two_way":
            # R2D2's image-text cross encoder: image tokens query the text tokens.
            setattr(self, "image_fusion" + suffix, CrossModalEncoder(config, vision_size, text_size))

    def _part(self, name: str, momentum: bool = False) -> nn.Module:
        return getattr(self, name + MOMENTUM_SUFFIX if momentum else name)

    # ---------------------------------------------------------------- uni-modal features
    def _text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        momentum: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if self.config.use_bridges:
            kwargs["output_hidden_states"] = True
        return text_tower_features(
            self._part("text_model", momentum),
            self._part("text_projection", momentum),
            self.config.text_pooling,
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            **kwargs,
        )

    def _image_features(self, pixel_values: torch.Tensor, momentum: bool = False, **kwargs):
        if self.config.use_bridges:
            kwargs["output_hidden_states"] = True
        return vision_tower_features(
            self._part("vision_model", momentum),
            self._part("visual_projection", momentum),
            self.config.vision_pooling,
            pixel_values,
            **kwargs,
        )

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Text tower output whose `pooler_output` is the projected (unnormalised) contrastive embedding (a tuple
        with `return_dict=False` or `config.return_dict=False`, as CLIP)."""
        return self._text_features(input_ids, attention_mask, token_type_ids, position_ids, **kwargs)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """Vision tower output whose `pooler_output` is the projected (unnormalised) contrastive embedding (a tuple
        with `return_dict=False` or `config.return_dict=False`, as CLIP)."""
        return self._image_features(pixel_values, **kwargs)

    def _embeddings(
        self, features: BaseModelOutputWithPooling, mask: torch.Tensor | None
    ) -> FusionRetrievalEmbeddings:
        states = features.last_hidden_state
        if mask is None:
            mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        bridges = None
        if self.config.use_bridges:
            layers = self.config.num_fusion_layers
            hidden = features.hidden_states
            if hidden is None or len(hidden) < layers + 1 or any(h.shape != states.shape for h in hidden[-layers:]):
                raise ValueError(
                    f"bridges need a tower with at least num_fusion_layers={layers} layers whose outputs all have "
                    f"the shape of its last hidden state {tuple(states.shape)}"
                )
            bridges = torch.stack(hidden[-layers:], dim=1)
        return FusionRetrievalEmbeddings(
            embeds=F.normalize(features.pooler_output, dim=-1),
            fusion_states=states,
            fusion_mask=mask,
            bridge_states=bridges,
        )

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> FusionRetrievalEmbeddings:
        """What a gallery keeps per text: the normalised embedding and the token states for the cross encoder."""
        return self._embeddings(
            self._text_features(input_ids, attention_mask, token_type_ids, **kwargs), attention_mask
        )

    def encode_image(self, pixel_values: torch.Tensor, **kwargs) -> FusionRetrievalEmbeddings:
        """What a gallery keeps per image: the normalised embedding and the token states for the cross encoder."""
        return self._embeddings(self._image_features(pixel_values, **kwargs), None)

    def similarity(self, image: RetrievalEmbeddings, text: RetrievalEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled contrastive (cosine) similarity `(sim_i2t, sim_t2i)`, both (images, texts), as the dual's."""
        sim = image.embeds @ text.embeds.t()
        return sim, sim

    # ---------------------------------------------------------------- cross encoders
    def cross_encode(
        self,
        image: FusionRetrievalEmbeddings,
        text: FusionRetrievalEmbeddings,
        output_attentions: bool = False,
        momentum: bool = False,
        image_stream: bool = True,
    ) -> CrossEncoderOutput:
        """Run the cross encoder(s) on aligned (image[i], text[i]) pairs.

        Args:
            output_attentions: also return the cross-attention maps (computed eagerly).
            momentum: use the momentum copy (pre-training model only).
            image_stream: in two-way mode, also run the image-query cross encoder (MLM alone does not need it).
        """
        text_out = self._part("text_fusion", momentum)(
            text.fusion_states,
            text.fusion_mask,
            image.fusion_states,
            image.fusion_mask,
            text.bridge_states,
            output_attentions,
        )
        image_out = None
        if self.config.fusion_mode == "two_way" and image_stream:
            image_out = self._part("image_fusion", momentum)(
                image.fusion_states,
                image.fusion_mask,
                text.fusion_states,
                text.fusion_mask,
                image.bridge_states,
                output_attentions,
            )
        itm_logits = text_out.itm_logits if image_out is None else (text_out.itm_logits + image_out.itm_logits) / 2
        return CrossEncoderOutput(
            itm_logits=itm_logits,
            text_itm_logits=text_out.itm_logits,
            image_itm_logits=None if image_out is None else image_out.itm_logits,
            text_hidden_state=text_out.last_hidden_state,
            image_hidden_state=None if image_out is None else image_out.last_hidden_state,
            text_cross_attentions=text_out.cross_attentions,
            image_cross_attentions=None if image_out is None else image_out.cross_attentions,
        )

    def rerank_scores(self, image: FusionRetrievalEmbeddings, text: FusionRetrievalEmbeddings) -> torch.Tensor:
        """Cross-encoder score of each aligned pair (image[i], text[i]): the ITM match log-odds
        `logit[match] - logit[no match]` (averaged over both cross encoders in two-way mode).

        Log-odds rather than a probability, because probabilities saturate at 1 and would tie the best
        candidates. A side with a single item is broadcast against the other (one query, k candidates). This
        method makes the model a `retrieval_core.RerankingModel`: two-stage evaluation and the Space call it on
        their top-k pairs through `rerank_topk`'s `pair_scorer`:
        `lambda i, t: model.rerank_scores(images.select(i), texts.select(t))`.
        """
        image, text = _broadcast_pairs(image, text)
        logits = self.cross_encode(image, text).itm_logits
        return logits[:, 1] - logits[:, 0]

    def itm_score(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM match log-odds of each given (image, text) pair, from raw inputs (see `rerank_scores`)."""
        return self.rerank_scores(
            self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask, token_type_ids)
        )

    @torch.no_grad()
    def rank(
        self,
        query: FusionRetrievalEmbeddings,
        gallery: FusionRetrievalEmbeddings,
        query_modality: str = "text",
        k: int = 16,
        combine: str | float = "sum",
        batch_size: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-stage retrieval: the contrastive top-`k` of the gallery for each query, re-ranked by the cross encoder.

        Args:
            query: encoded queries (`encode_text` for text-to-image search, `encode_image` for image-to-text).
            gallery: encoded gallery of the other modality (e.g. `FusionRetrievalEmbeddings.cat` of batches).
            query_modality: `"text"` or `"image"`: the modality of `query`.
            k: candidates kept from the first stage (clipped to the gallery size).
            combine: final score from the cross score `c` and contrastive cosine `s`: `"cross"` -> `c` (ALBEF),
                `"sum"` -> `c + s` (LAVIS), a weight `w` in [0, 1] -> `w * c + (1 - w) * s`
                (`retrieval_core.combine_scores`).
            batch_size: pairs per cross-encoder call.

        Returns:
            `(scores, indices)`, both (num_queries, k): combined scores, descending, and gallery indices.
            First-stage ties keep the lower gallery index (`retrieval_core.blockwise_topk`, which scores the gallery
            in blocks, so no full similarity matrix is held), equal combined scores keep the first-stage order
            (`retrieval_core.rerank_topk`).
        """
        if query_modality not in ("text", "image"):
            raise ValueError(f"query_modality must be 'text' or 'image', got {query_modality!r}")
        combine = parse_combine(combine)
        query_is_image = query_modality == "image"

        def first_stage(start: int, stop: int) -> torch.Tensor:
            block = gallery.select(slice(start, stop))
            return self.similarity(query, block)[0] if query_is_image else self.similarity(block, query)[1].t()

        first_scores, candidates = blockwise_topk(first_stage, gallery.embeds.shape[0], k, _RANK_CHUNK_SIZE)

        def cross_scores(query_index: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
            queries, items = query.select(query_index), gallery.select(candidate_index)
            return self.rerank_scores(*((queries, items) if query_is_image else (items, queries)))

        return rerank_topk(None, candidates, first_scores, cross_scores, combine=combine, batch_size=batch_size)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        image_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> FusionEncoderOutput | tuple:
        r"""Contrastive scores of every image against every text (the first stage), as the dual encoder.

        Args:
            return_loss (`bool`, *optional*): also return the in-batch contrastive loss (gathered across ranks).
            image_ids (`torch.LongTensor` of shape `(batch,)`, *optional*): pairs sharing an image id are
                positives of each other in the loss.
        """
        tower_kwargs = present(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        # Image tower first, as the dual encoder: backward then frees the vision activations last (lower peak memory).
        image_features = self._image_features(pixel_values, **tower_kwargs)
        text_features = self._text_features(input_ids, attention_mask, token_type_ids, position_ids, **tower_kwargs)
        text_embeds = F.normalize(text_features.pooler_output, dim=-1)
        image_embeds = F.normalize(image_features.pooler_output, dim=-1)
        logit_scale = self.get_logit_scale()
        logits_per_image = logit_scale * image_embeds @ text_embeds.t()
        loss = self._in_batch_itc(image_embeds, text_embeds, logit_scale, image_ids) if return_loss else None
        output = FusionEncoderOutput(
            loss=loss,
            itc_loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_features,
            vision_model_output=image_features,
        )
        use_return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_return_dict else output.to_tuple()

    def _in_batch_itc(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        image_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Symmetric InfoNCE of the local batch against every rank's embeddings (gathered with gradient)."""
        all_images, all_texts, offset, all_ids = gather_contrastive_batch(
            RetrievalEmbeddings(embeds=image_embeds),
            RetrievalEmbeddings(embeds=text_embeds),
            image_ids,
            enabled=self.config.gather_distributed,
        )
        return image_text_contrastive_loss(
            logit_scale * image_embeds @ all_texts.embeds.t(),
            logit_scale * text_embeds @ all_images.embeds.t(),
            offset,
            image_ids,
            all_ids,
        )

    # ---------------------------------------------------------------- construction from other checkpoints
    def _extra_auto_map(self) -> dict[str, str]:
        # Whichever class saves, the folder must load as either: both model classes go into auto_map.
        module = type(self).__module__.split(".")[-1]
        return {
            "AutoModel": f"{module}.FusionEncoderForRetrieval",
            "AutoModelForPreTraining": f"{module}.FusionEncoderForPreTraining",
            ZERO_SHOT_AUTO_CLASS: f"{module}.FusionEncoderForRetrieval",
        }

    def _momentum_keys(self) -> list[str]:
        """State-dict keys of the momentum model (none here; see the pre-training subclass)."""
        return [key for key in self.state_dict() if key.split(".", 1)[0].endswith(MOMENTUM_SUFFIX)]

    @classmethod
    def from_dual_encoder(
        cls,
        dual_model_or_path: DualEncoderModel | str | os.PathLike,
        hub_kwargs: dict | None = None,
        **fusion_config_kwargs,
    ) -> FusionEncoderForRetrieval:
        """Start a fusion model from a trained dual encoder (a model, a folder or a Hub id).

        Towers, contrastive projections and the temperature are copied; the cross encoders (and the MLM head) are
        new; in the pre-training model the momentum model is a copy of the result. The contrastive head keeps the
        dual encoder's width (`projection_dim`) and pooling; other keyword arguments (e.g.
        `num_fusion_layers`, `fusion_mode`, `queue_size`) go to [`FusionEncoderConfig`]. `hub_kwargs` (e.g.
        `revision`, `token`) go to `from_pretrained` when a path or id is given.
        """
        if isinstance(dual_model_or_path, DualEncoderModel):
            dual = dual_model_or_path
        else:
            dual = DualEncoderModel.from_pretrained(dual_model_or_path, **(hub_kwargs or {}))
        source = dual.config
        if source.similarity != "global":
            logger.warning(
                "The dual encoder was trained with %s similarity; the fusion model's contrastive stage uses the global "
                "(pooled) embeddings of the same projections.",
                source.similarity,
            )
        inherited = {
            "text_config": source.text_config.to_dict(),
            "vision_config": source.vision_config.to_dict(),
            "projection_dim": source.projection_dim,
            "logit_scale_max": source.logit_scale_max,
            "text_pooling": source.text_pooling,
            "vision_pooling": source.vision_pooling,
        }
        clashes = sorted(set(inherited) & set(fusion_config_kwargs))
        if clashes:
            raise ValueError(f"{clashes} are fixed by the dual encoder's weights and cannot be overridden")
        model = cls(cls.config_class(**inherited, **fusion_config_kwargs))
        for name in ("text_model", "vision_model", "text_projection", "visual_projection"):
            getattr(model, name).load_state_dict(getattr(dual, name).state_dict())
        with torch.no_grad():
            model.logit_scale.copy_(dual.logit_scale)
        model._after_load(model._momentum_keys())
        return model


class FusionEncoderForPreTraining(FusionPreTrainingObjectives, FusionEncoderForRetrieval):
    """Fusion encoder pre-training: ITC (+ momentum queue and distillation), ITM with hard negatives, MLM and
    R2D2's target- and feature-guided distillation, each returned separately and summed with config weights.

    The momentum (EMA) model is every sub-module again with the suffix `_m`, frozen (`requires_grad=False`, so
    an optimizer built from trainable parameters never holds it) and always in eval mode (deterministic
    targets). It changes only through `momentum_update()`, which the trainer calls once per optimizer step,
    so gradient accumulation does not compound the momentum (ALBEF updates once per forward). The queue of
    momentum features is filled by every training forward.

    Example:

    ```python
    >>> import torch
    >>> from hf_vlp import FusionEncoderConfig, FusionEncoderForPreTraining
    >>> model = FusionEncoderForPreTraining(FusionEncoderConfig.from_preset("tiny-fusion"))
    >>> out = model(input_ids=torch.tensor([[2, 900, 901, 3], [2, 902, 903, 3]]), pixel_values=torch.randn(2, 3, 64, 64))
    >>> out.loss.backward()
    >>> model.momentum_update()
    ```
    """

    supports_zero_shot_pipeline = False  # zero-shot classification goes to FusionEncoderForRetrieval
    _keys_to_ignore_on_load_unexpected = None  # everything of a pre-training checkpoint is used here

    def __init__(self, config: FusionEncoderConfig):
        super().__init__(config)
        self.copy_params()  # a no-op under meta-device loading, where `_after_load` does it instead

    def _build_modules(self) -> None:
        super()._build_modules()
        config = self.config
        embeddings = self.text_model.get_input_embeddings()
        embedding_name = next(name for name, p in self.text_model.named_parameters() if p is embeddings.weight)
        head_args = (config, config.fusion_hidden_size, embeddings.embedding_dim, embeddings.num_embeddings)
        self.mlm_head = MaskedLMHead(*head_args)
        tied = {"mlm_head.decoder.weight": f"text_model.{embedding_name}"}
        if config.use_momentum_encoder:
            self._build_encoders(suffix=MOMENTUM_SUFFIX)
            self.mlm_head_m = MaskedLMHead(*head_args)
            tied["mlm_head_m.decoder.weight"] = f"text_model_m.{embedding_name}"
            if config.queue_size > 0:
                self.register_buffer("image_queue", torch.zeros(config.queue_size, config.projection_dim))
                self.register_buffer("text_queue", torch.zeros(config.queue_size, config.projection_dim))
                # Image id of each queued pair (-1: unknown), so captions of a batch's images are not negatives.
                self.register_buffer("id_queue", torch.full((config.queue_size,), -1, dtype=torch.long))
                self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        # Resolved per instance: the word-embedding parameter's name depends on the text tower's architecture.
        self._tied_weights_keys = tied

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FusionEncoderForPreTraining) and getattr(module, "image_queue", None) is not None:
            # ALBEF: random unit vectors, i.e. random negatives until real momentum features replace them.
            init.copy_(module.image_queue, F.normalize(torch.randn_like(module.image_queue), dim=1))
            init.copy_(module.text_queue, F.normalize(torch.randn_like(module.text_queue), dim=1))
            init.constant_(module.id_queue, -1)
            init.zeros_(module.queue_ptr)

    # ---------------------------------------------------------------- momentum model
    def _momentum_triples(self) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        """(momentum module name, online parameter, momentum parameter) for every momentum parameter.

        Built from `named_parameters()`, which lists a shared tensor once: the tied MLM decoder / word embedding
        of the momentum model is updated once per step, not twice.
        """
        triples = []
        for name, param in self.named_parameters():
            head, _, rest = name.partition(".")
            if head.endswith(MOMENTUM_SUFFIX):
                triples.append((head, self.get_parameter(f"{head[: -len(MOMENTUM_SUFFIX)]}.{rest}"), param))
        return triples

    def momentum_parameters(self) -> list[nn.Parameter]:
        """The momentum model's parameters (frozen; never give them to an optimizer)."""
        return [momentum for _, _, momentum in self._momentum_triples()]

    @torch.no_grad()
    def copy_params(self, modules: Collection[str] | None = None) -> None:
        """Make the momentum model (or only its `modules`, e.g. `{"text_model_m"}`) a copy of the online one."""
        for head, online, momentum in self._momentum_triples():
            if modules is None or head in modules:
                momentum.copy_(online)
        self.freeze_momentum()

    def freeze_momentum(self) -> None:
        """`requires_grad=False` on the momentum model (again after loading: transformers 5 resets it)."""
        for momentum in self.momentum_parameters():
            momentum.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """One EMA step of the momentum model: `p_m = m * p_m + (1 - m) * p`. Call once per optimizer step."""
        triples = self._momentum_triples()
        if triples:
            ema_update_([m for _, _, m in triples], [p for _, p, _ in triples], self.config.momentum)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the vocabulary of the online model (text tower, tied MLM decoder) and of the momentum copy.

        The momentum model reads the same token ids (its text tower and `mlm_head_m`, tied the same way), so it
        is resized to the same size; it keeps its own rows for the existing ids and starts the new ids' rows as
        copies of the online ones, as `copy_params()` would.
        """
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if getattr(self, "text_model_m", None) is None:
            return embeddings
        momentum = self.text_model_m.get_input_embeddings()
        if momentum.num_embeddings != embeddings.num_embeddings:
            resized = nn.Embedding(
                embeddings.num_embeddings,
                embeddings.embedding_dim,
                padding_idx=momentum.padding_idx,
                device=embeddings.weight.device,
                dtype=embeddings.weight.dtype,
            )
            decoder = self.mlm_head_m.decoder
            bias = None if decoder.bias is None else _resized_rows(decoder.bias, self.mlm_head.decoder.bias)
            with torch.no_grad():
                resized.weight.copy_(_resized_rows(momentum.weight, embeddings.weight))
            self.text_model_m.set_input_embeddings(resized)
            decoder.weight = resized.weight  # the tie of `_build_modules`
            decoder.out_features = embeddings.num_embeddings
            if bias is not None:
                decoder.bias = nn.Parameter(bias)
            self.freeze_momentum()
        return embeddings

    def _after_load(self, missing_keys: list[str]) -> None:
        # A checkpoint without (part of) the momentum model, e.g. a retrieval or dual-encoder checkpoint: the missing
        # momentum modules start as copies of the loaded online ones. transformers 5 re-creates loaded parameters
        # with requires_grad=True, so the momentum model is frozen again in any case.
        stale = {key.split(".", 1)[0] for key in missing_keys}
        self.copy_params({head for head in stale if head.endswith(MOMENTUM_SUFFIX)})

    def train(self, mode: bool = True):
        super().train(mode)
        for name, module in self.named_children():
            if name.endswith(MOMENTUM_SUFFIX):
                module.eval()
        return self

    @torch.no_grad()
    def _enqueue(self, image_keys: torch.Tensor, text_keys: torch.Tensor, key_ids: torch.Tensor | None) -> None:
        if key_ids is None:
            key_ids = torch.full((image_keys.shape[0],), -1, dtype=torch.long, device=image_keys.device)
        ring_buffer_enqueue_(
            [self.image_queue, self.text_queue, self.id_queue], [image_keys, text_keys, key_ids], self.queue_ptr
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool = True,
        image_ids: torch.LongTensor | None = None,
        alpha: float | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> FusionEncoderForPreTrainingOutput | FusionEncoderOutput | tuple:
        r"""Compute every enabled pre-training objective on a batch of aligned (image, text) pairs.

        The objectives are named steps sharing one `_PreTrainingBatch`: `_itc_terms`, `_itm_terms` (with target
        distillation), `_mlm_terms` and `_feature_distillation` (both on one `_masked_pass`); the total is
        `sum(config.loss_weights[term] * term)`.

        Args:
            return_loss (`bool`, *optional*, defaults to `True`): `False` gives the contrastive output of
                [`FusionEncoderForRetrieval`] instead (no loss, no momentum, no queue update).
            image_ids (`torch.LongTensor` of shape `(batch,)`, *optional*): non-negative id of each pair's image.
                Pairs sharing an id are ITC positives of each other (also against the queue) and never ITM
                negatives. Identical captions are never ITM negatives either way.
            alpha (`float`, *optional*): momentum distillation weight for this step (default
                `config.distill_alpha`); ALBEF ramps it up from 0 over the first epoch.
            output_attentions, output_hidden_states (`bool`, *optional*): passed to the (online) towers, whose
                outputs are returned as `text_model_output` / `vision_model_output`.
        """
        if not return_loss:
            return super().forward(
                input_ids,
                pixel_values,
                attention_mask,
                token_type_ids,
                position_ids,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=return_dict,
            )
        config = self.config
        momentum = config.use_momentum_encoder
        alpha = config.distill_alpha if alpha is None else alpha
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tower_kwargs = present(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        image_features = self._image_features(pixel_values, **tower_kwargs)
        text_features = self._text_features(input_ids, attention_mask, token_type_ids, position_ids, **tower_kwargs)
        image_m = text_m = None
        if momentum:
            with torch.no_grad():
                text_m = self._embeddings(
                    self._text_features(input_ids, attention_mask, token_type_ids, position_ids, momentum=True),
                    attention_mask,
                )
                image_m = self._embeddings(self._image_features(pixel_values, momentum=True), None)
        batch = _PreTrainingBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            image_ids=image_ids,
            image=self._embeddings(image_features, None),
            text=self._embeddings(text_features, attention_mask),
            image_m=image_m,
            text_m=text_m,
            logit_scale=self.get_logit_scale(),
            alpha=alpha if momentum else 0.0,
        )

        losses = self._itc_terms(batch)
        itm = self._itm_terms(batch)
        losses.update(itm.losses)
        if config.mlm_weight > 0 or config.feature_distill_weight > 0:
            masked = self._masked_pass(batch)
            losses.update(self._mlm_terms(batch, masked))
            losses.update(self._feature_distillation(batch, masked, itm.teacher_positive))

        weights = config.loss_weights
        logits_per_image = batch.logit_scale * batch.image.embeds @ batch.text.embeds.t()
        output = FusionEncoderForPreTrainingOutput(
            loss=sum(weights[name] * value for name, value in losses.items()) if losses else None,
            **losses,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=batch.text.embeds,
            image_embeds=batch.image.embeds,
            itm_logits=itm.logits,
            itm_labels=itm.labels,
            text_model_output=text_features,
            vision_model_output=image_features,
        )
        use_return_dict = return_dict if return_dict is not None else config.return_dict
        return output if use_return_dict else output.to_tuple()


def _resized_rows(own: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
    """A momentum tensor resized along dim 0 to the online one's length: its own rows where both have them, the
    online rows beyond (detached copies)."""
    rows = min(own.shape[0], online.shape[0])
    resized = online.detach().clone()
    resized[:rows] = own.detach()[:rows]
    return resized


def _broadcast_pairs(
    image: FusionRetrievalEmbeddings, text: FusionRetrievalEmbeddings
) -> tuple[FusionRetrievalEmbeddings, FusionRetrievalEmbeddings]:
    """Repeat a single-item side to the other side's length; otherwise the lengths must agree."""
    num_images, num_texts = image.embeds.shape[0], text.embeds.shape[0]
    if num_images == num_texts:
        return image, text
    if num_images == 1:
        return image.select(torch.zeros(num_texts, dtype=torch.long, device=image.embeds.device)), text
    if num_texts == 1:
        return image, text.select(torch.zeros(num_images, dtype=torch.long, device=text.embeds.device))
    raise ValueError(f"cannot pair {num_images} images with {num_texts} texts: give aligned pairs or one side of one")
