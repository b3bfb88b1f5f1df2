"""The hf-vlp dual encoder: any text tower + any vision tower, projections, contrastive loss.

CLIP / Chinese-CLIP global similarity, Wukong's token-wise (FILIP) late interaction with optional token
reduction, and locked-image / locked-text tuning (LiT). Shipped with saved models (Hub custom code):
imports torch, transformers and sibling files only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_dual_encoder import DualEncoderConfig
from .contrastive import image_text_contrastive_loss, token_wise_similarity
from .retrieval_core import RetrievalEmbeddings, gather_contrastive_batch
from .towers import (
    build_tower,
    load_tower,
    lock_tower,
    present,
    text_tower_features,
    vision_tower_features,
    vision_width,
)


__all__ = [
    "DualEncoderOutput",
    "RetrievalEmbeddings",
    "TokenReducer",
    "VLPPreTrainedModel",
    "DualEncoderModel",
]

ZERO_SHOT_AUTO_CLASS = "AutoModelForZeroShotImageClassification"


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


class VLPPreTrainedModel(PreTrainedModel):
    """Shared base of hf-vlp models: init of our own heads, load-time fix-ups, LiT-aware `train()`.

    transformers 5 builds models on the meta device and loads weights afterwards, and re-creates loaded
    parameters with `requires_grad=True`; anything `__init__` decided about trainability is therefore lost on
    `from_pretrained`. `_after_load` re-applies it on every load path (in-process, Auto classes, remote code).
    """

    base_model_prefix = "vlp"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # Sums of ITC/ITM/MLM must be scaled by the Trainer under gradient accumulation, not by token counts.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        factor = getattr(self.config, "initializer_factor", 1.0)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=0.02 * factor)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=0.02 * factor)
        if getattr(module, "logit_scale", None) is not None and isinstance(module.logit_scale, nn.Parameter):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    def _after_load(self, missing_keys: list[str]) -> None:
        """Hook run after every `from_pretrained`: re-apply frozen parameters and other load-time invariants."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        model._after_load(list(info.get("missing_keys", [])))
        return (model, info) if want_info else model

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def get_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped to `config.logit_scale_max`, as CLIP (and ALBEF) bound the temperature."""
        return self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str,
        text_model_name_or_path: str,
        hub_kwargs: dict | None = None,
        **config_kwargs,
    ):
        """Build a model on real pretrained towers (Hub ids or local folders); everything else is new.

        Keyword arguments go to the config (e.g. `projection_dim`, `similarity`, `lock_vision`). A vision
        checkpoint of a composite model such as CLIP contributes only its vision tower. `hub_kwargs` (e.g.
        `revision`, `token`, `cache_dir`) go to every download. The weights are copied into the towers the
        model built (not swapped in) so weight tying survives, and every key outside the two towers counts as
        missing for `_after_load` (LiT locks, momentum copies).
        """
        hub_kwargs = hub_kwargs or {}
        vision_config = AutoConfig.from_pretrained(vision_model_name_or_path, **hub_kwargs)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        text_config = AutoConfig.from_pretrained(text_model_name_or_path, **hub_kwargs)
        model = cls(cls.config_class(text_config=text_config, vision_config=vision_config, **config_kwargs))
        config = model.config
        text_tower = load_tower(text_model_name_or_path, config.text_config, drop_pooler=True, **hub_kwargs)
        model.text_model.load_state_dict(text_tower.state_dict())
        drop_vision_pooler = config.vision_pooling != "pooler"
        vision_tower = load_tower(vision_model_name_or_path, config.vision_config, drop_vision_pooler, **hub_kwargs)
        model.vision_model.load_state_dict(vision_tower.state_dict())
        model._after_load([k for k in model.state_dict() if not k.startswith(("text_model.", "vision_model."))])
        return model

    def _extra_auto_map(self) -> dict[str, str]:
        """`auto_map` entries beyond the one transformers writes for `_auto_class`, as `{auto class: "module.Class"}`.

        The zero-shot pipeline resolves remote code through its own auto class: point it at the same class.
        """
        if not getattr(self, "supports_zero_shot_pipeline", False):
            return {}
        return {ZERO_SHOT_AUTO_CLASS: f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"}

    def save_pretrained(self, save_directory, *args, **kwargs):
        if getattr(self, "_auto_class", None) is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._extra_auto_map()}
        return super().save_pretrained(save_directory, *args, **kwargs)


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

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        self.text_model = build_tower(config.text_config, drop_pooler=True)
        self.vision_model = build_tower(config.vision_config, drop_pooler=config.vision_pooling != "pooler")
        text_dim = config.text_config.hidden_size
        vision_dim = vision_width(config.vision_config)
        self.text_projection = nn.Linear(text_dim, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(vision_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        if config.similarity == "token_wise" and config.token_reduction == "learned":
            self.image_token_reducer = TokenReducer(config.projection_dim, config.image_tokens_kept)
            self.text_token_reducer = TokenReducer(config.projection_dim, config.text_tokens_kept)
        self.post_init()
        self.apply_locks()

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

    # ---------------------------------------------------------------- features
    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Text tower output whose `pooler_output` is the projected (unnormalised) text embedding (a tuple with
        `return_dict=False` or `config.return_dict=False`, as CLIP)."""
        return text_tower_features(
            self.text_model,
            self.text_projection,
            self.config.text_pooling,
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            **kwargs,
        )

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """Vision tower output whose `pooler_output` is the projected (unnormalised) image embedding (a tuple with
        `return_dict=False` or `config.return_dict=False`, as CLIP)."""
        return vision_tower_features(
            self.vision_model, self.visual_projection, self.config.vision_pooling, pixel_values, **kwargs
        )

    def _retrieval_embeddings(
        self, features: BaseModelOutputWithPooling, token_mask: torch.Tensor | None, is_image: bool
    ) -> RetrievalEmbeddings:
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

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> RetrievalEmbeddings:
        """Normalised text embeddings (and token embeddings for token-wise similarity) for retrieval."""
        features = self.get_text_features(input_ids, attention_mask, token_type_ids, return_dict=True, **kwargs)
        return self._retrieval_embeddings(features, attention_mask, is_image=False)

    def encode_image(self, pixel_values: torch.Tensor, **kwargs) -> RetrievalEmbeddings:
        """Normalised image embeddings (and token embeddings for token-wise similarity) for retrieval."""
        features = self.get_image_features(pixel_values, return_dict=True, **kwargs)
        return self._retrieval_embeddings(features, None, is_image=True)

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
        sim = image.embeds @ text.embeds.t()
        return sim, sim

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
    ) -> DualEncoderOutput | tuple:
        r"""Score every image of the batch against every text; with `return_loss`, the contrastive loss.

        Args:
            image_ids (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Id of each pair's image; pairs sharing an image are positives of each other in the loss
                (several captions per image), instead of being pushed apart as negatives.

        Under `torch.distributed` (and `config.gather_distributed`), the loss uses the embeddings of every
        rank as negatives, gathered with gradient; the returned logits stay the local batch's.
        """
        tower_kwargs = present(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        # Image tower first: backward runs in reverse order, so the tower run last is differentiated first while
        # the other one's activations are still held. Differentiating the text tower first (fewer tokens, smaller
        # backward temporaries) and the vision tower last, after the text activations are freed, lowers the
        # peak memory of a train step (by 7-9% at the tiny preset's sizes, to ChineseCLIPModel's, which runs the
        # towers in this order; see benchmarks/bench_train_step.py).
        image_features = self.get_image_features(pixel_values, return_dict=True, **tower_kwargs)
        text_features = self.get_text_features(
            input_ids, attention_mask, token_type_ids, position_ids=position_ids, return_dict=True, **tower_kwargs
        )
        text = self._retrieval_embeddings(text_features, attention_mask, is_image=False)
        image = self._retrieval_embeddings(image_features, None, is_image=True)
        logit_scale = self.get_logit_scale()

        sim_i2t, sim_t2i = self.similarity(image, text)
        logits_per_image = logit_scale * sim_i2t
        logits_per_text = logit_scale * sim_t2i.t()

        loss = None
        if return_loss:
            loss = self.contrastive_loss(image, text, logit_scale, image_ids)

        output = DualEncoderOutput(
            loss=loss,
            itc_loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text.embeds,
            image_embeds=image.embeds,
            text_model_output=text_features,
            vision_model_output=image_features,
        )
        use_return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_return_dict else output.to_tuple()

    def contrastive_loss(
        self,
        image: RetrievalEmbeddings,
        text: RetrievalEmbeddings,
        logit_scale: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Symmetric InfoNCE of the local batch against the keys of every rank (one rank: the batch itself)."""
        all_image, all_text, offset, all_ids = gather_contrastive_batch(
            image, text, image_ids, enabled=self.config.gather_distributed
        )
        if all_image is image and all_text is text:
            # One rank: both directions come from one similarity call; two calls would compute the same scores
            # twice (costly for token-wise similarity) and hold one more batch x batch buffer.
            i2t, t2i = self.similarity(image, text)
        else:
            i2t, _ = self.similarity(image, all_text)
            _, t2i = self.similarity(all_image, text)
        return image_text_contrastive_loss(logit_scale * i2t, logit_scale * t2i.t(), offset, image_ids, all_ids)
