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

Split by role: the towers, features, `similarity` and contrastive `forward` and loss are shared with the dual
encoder (`modeling_base.py`); the outputs are in `fusion_outputs.py`, the cross-encoder ranking in
`fusion_ranking.py`, the momentum model in `fusion_momentum.py` and the pre-training objective steps in
`fusion_pretraining.py` (mixins, all importable from here). Both model classes stay in this module: every saved
folder's `auto_map` names them as `modeling_fusion_encoder.<class>`, and `save_pretrained` ships this file and
the siblings it imports whichever class saves.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from .configuration_fusion_encoder import FusionEncoderConfig
from .fusion_layers import CrossEncoderOutput, CrossModalEncoder, MaskedLMHead
from .fusion_momentum import MomentumEncoderMixin
from .fusion_outputs import FusionEncoderForPreTrainingOutput, FusionEncoderOutput, FusionRetrievalEmbeddings
from .fusion_pretraining import FusionPreTrainingObjectives, _PreTrainingBatch
from .fusion_ranking import CrossEncoderRankingMixin
from .modeling_base import MOMENTUM_SUFFIX, ZERO_SHOT_AUTO_CLASS, VLPPreTrainedModel
from .modeling_dual_encoder import DualEncoderModel
from .towers import build_tower, present, vision_width


__all__ = [
    "FusionEncoderForPreTraining",
    "FusionEncoderForPreTrainingOutput",
    "FusionEncoderForRetrieval",
    "FusionEncoderOutput",
    "FusionRetrievalEmbeddings",
]

logger = logging.get_logger(__name__)


class FusionEncoderForRetrieval(CrossEncoderRankingMixin, VLPPreTrainedModel):
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
    _output_class = FusionEncoderOutput

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

    # ---------------------------------------------------------------- uni-modal features
    def _tower_kwargs(self, kwargs: dict) -> dict:
        # Bridges feed the towers' top layer outputs into the fusion layers: every tower call returns them.
        return {**kwargs, "output_hidden_states": True} if self.config.use_bridges else kwargs

    def _gallery_embeddings(
        self, features: BaseModelOutputWithPooling, token_mask: torch.Tensor | None, is_image: bool
    ) -> FusionRetrievalEmbeddings:
        """What a gallery keeps per item: the normalised embedding and the token states for the cross encoder."""
        states = features.last_hidden_state
        mask = token_mask
        if mask is None:  # image tokens: all real
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


class FusionEncoderForPreTraining(MomentumEncoderMixin, FusionPreTrainingObjectives, FusionEncoderForRetrieval):
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
                text_m = self._gallery_embeddings(
                    self._text_features(input_ids, attention_mask, token_type_ids, position_ids, momentum=True),
                    attention_mask,
                    is_image=False,
                )
                image_m = self._gallery_embeddings(self._image_features(pixel_values, momentum=True), None, True)
        batch = _PreTrainingBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            image_ids=image_ids,
            image=self._gallery_embeddings(image_features, None, is_image=True),
            text=self._gallery_embeddings(text_features, attention_mask, is_image=False),
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
