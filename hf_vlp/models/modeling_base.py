"""The shared base of the hf-vlp model families: two towers with CLIP's contrastive surface.

A dual encoder and the contrastive stage of a fusion encoder are the same model: any transformers text tower and
vision tower, a linear projection of each into one embedding space, and a clamped learned temperature.
[`VLPPreTrainedModel`] holds that once, so both families embed, score and compute their in-batch contrastive loss
with the same code: `get_text_features` / `get_image_features` (transformers 5's CLIP convention), `encode_*` and
`similarity` (the `retrieval_core.RetrievalModel` contract), the contrastive `forward` and its loss gathered across
ranks, plus what transformers needs around loading and saving (weight init, load-time fix-ups, `auto_map`). A
family changes what differs through small hooks: `_contrastive_embeddings` (what the loss compares),
`_gallery_embeddings` (what `encode_*` return), `_tower_kwargs`, `similarity` and `_output_class`.

Shipped with saved models (Hub custom code): imports torch, transformers and sibling files only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .contrastive import image_text_contrastive_loss, sigmoid_contrastive_loss
from .retrieval_core import RetrievalEmbeddings, gather_contrastive_batch
from .towers import load_tower, present, text_tower_features, vision_tower_features


__all__ = ["MOMENTUM_SUFFIX", "VLPPreTrainedModel", "ZERO_SHOT_AUTO_CLASS"]

ZERO_SHOT_AUTO_CLASS = "AutoModelForZeroShotImageClassification"
#: Suffix of the momentum (EMA) copy of every sub-module in fusion pre-training (`text_model_m` ...).
MOMENTUM_SUFFIX = "_m"


class VLPPreTrainedModel(PreTrainedModel):
    """Shared base of hf-vlp models: two projected towers with CLIP's contrastive surface (see the module
    docstring), init of our own heads and load-time fix-ups.

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

    # Heads that map a tower's width into the shared embedding space; initialised as CLIP does (see _init_weights).
    _projection_names = ("text_projection", "visual_projection")

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise hf-vlp's own modules; the towers keep their own family's scheme (BERT's, CLIP's ...).

        The embedding projections follow CLIP / Chinese-CLIP: normal with std `in_features ** -0.5` (times
        `initializer_factor`), not the 0.02 of a generic linear layer. At 0.02 a 192-wide tower's embeddings start
        3.6x smaller relative to their own noise, the scaled logits start nearly flat (std 0.09 against CLIP's
        0.36 at the same logit scale), and a fresh model sits on the ln(batch) loss plateau far longer
        (benchmarks/bench_quality.py). transformers initialises children before their parent, so the parent-level
        branch below has the last word on the projections.
        """
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
        for name in self._projection_names:  # (a fusion model's momentum copies are then copied from these)
            projection = getattr(module, name, None)
            if isinstance(projection, nn.Linear):
                init.normal_(projection.weight, mean=0.0, std=projection.in_features**-0.5 * factor)
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

    # Whether `match_score` is already a log-odds (a fusion ITM head) that is a probability uncalibrated.
    match_score_is_log_odds = False

    @property
    def has_match_probability(self) -> bool:
        """Whether `match_probability` gives probabilities (calibrated, or a fusion ITM head) instead of raising."""
        return self.match_score_is_log_odds or getattr(self.config, "match_calibration", None) is not None

    @torch.no_grad()
    def match_probability(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Probability that each (image[i], text[i]) pair matches, shape `(pairs,)`; a side with one item is paired
        with every item of the other (one image against N captions gives N probabilities).

        `sigmoid(scale * match_score + bias)` with the `config.match_calibration` that `hf-vlp calibrate` fits on
        held-out pairs: a cosine of 0.3 means nothing by itself, a calibrated 0.9 is right about 90% of the time.
        Fusion encoders score with their ITM head, which is a probability even uncalibrated; a dual encoder
        without calibration raises `ValueError` naming the command.
        """
        calibration = getattr(self.config, "match_calibration", None)
        if not self.has_match_probability:
            raise ValueError(
                f"{type(self).__name__} has no match calibration: run `hf-vlp calibrate MODEL --eval-dir DIR` first"
            )
        scale, bias = (calibration["scale"], calibration["bias"]) if calibration else (1.0, 0.0)
        image = self.encode_image(pixel_values)
        text = self.encode_text(input_ids, attention_mask, token_type_ids)
        return torch.sigmoid(scale * self.match_score(image, text).float() + bias)

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

    # ---------------------------------------------------------------- towers and features
    # The model output class of `forward` (`DualEncoderOutput` or a subclass), set by each family.
    _output_class: type[ModelOutput]

    def _part(self, name: str, momentum: bool = False) -> nn.Module:
        """The sub-module `name`, or its momentum copy `name + MOMENTUM_SUFFIX` (fusion pre-training only)."""
        return getattr(self, name + MOMENTUM_SUFFIX if momentum else name)

    def _tower_kwargs(self, kwargs: dict) -> dict:
        """Keyword arguments of a tower call (the fusion encoder's bridges also need every layer's output)."""
        return kwargs

    def _text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        momentum: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        return text_tower_features(
            self._part("text_model", momentum),
            self._part("text_projection", momentum),
            self.config.text_pooling,
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            **self._tower_kwargs(kwargs),
        )

    def _image_features(self, pixel_values: torch.Tensor, momentum: bool = False, **kwargs):
        return vision_tower_features(
            self._part("vision_model", momentum),
            self._part("visual_projection", momentum),
            self.config.vision_pooling,
            pixel_values,
            **self._tower_kwargs(kwargs),
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
        """Text tower output whose `pooler_output` is the projected (unnormalised) text embedding (a tuple with
        `return_dict=False` or `config.return_dict=False`, as CLIP)."""
        return self._text_features(input_ids, attention_mask, token_type_ids, position_ids, **kwargs)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """Vision tower output whose `pooler_output` is the projected (unnormalised) image embedding (a tuple with
        `return_dict=False` or `config.return_dict=False`, as CLIP)."""
        return self._image_features(pixel_values, **kwargs)

    # ---------------------------------------------------------------- retrieval contract
    def _contrastive_embeddings(
        self, features: BaseModelOutputWithPooling, token_mask: torch.Tensor | None, is_image: bool
    ) -> RetrievalEmbeddings:
        """What the contrastive logits and loss compare: the normalised pooled embedding."""
        return RetrievalEmbeddings(embeds=F.normalize(features.pooler_output, dim=-1))

    def _gallery_embeddings(
        self, features: BaseModelOutputWithPooling, token_mask: torch.Tensor | None, is_image: bool
    ) -> RetrievalEmbeddings:
        """What `encode_text` / `encode_image` return: by default what the contrastive stage compares."""
        return self._contrastive_embeddings(features, token_mask, is_image)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> RetrievalEmbeddings:
        """What a retrieval gallery keeps per text: the normalised embedding (and what the family's `similarity` or
        cross encoder reads besides: token embeddings, token states)."""
        features = self._text_features(input_ids, attention_mask, token_type_ids, **kwargs)
        return self._gallery_embeddings(features, attention_mask, is_image=False)

    def encode_image(self, pixel_values: torch.Tensor, **kwargs) -> RetrievalEmbeddings:
        """What a retrieval gallery keeps per image (see `encode_text`)."""
        return self._gallery_embeddings(self._image_features(pixel_values, **kwargs), None, is_image=True)

    def similarity(self, image: RetrievalEmbeddings, text: RetrievalEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled similarity of every image with every text: `(sim_i2t, sim_t2i)`, both (images, texts); here the
        cosine of the normalised embeddings, so the two are equal."""
        sim = image.embeds @ text.embeds.t()
        return sim, sim

    # ---------------------------------------------------------------- contrastive forward
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
    ) -> ModelOutput | tuple:
        r"""Score every image of the batch against every text; with `return_loss`, the contrastive loss.

        Args:
            return_loss (`bool`, *optional*): also return the in-batch contrastive loss (gathered across ranks).
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
        image_features = self._image_features(pixel_values, **tower_kwargs)
        text_features = self._text_features(input_ids, attention_mask, token_type_ids, position_ids, **tower_kwargs)
        text = self._contrastive_embeddings(text_features, attention_mask, is_image=False)
        image = self._contrastive_embeddings(image_features, None, is_image=True)
        logit_scale = self.get_logit_scale()

        sim_i2t, sim_t2i = self.similarity(image, text)
        logits_per_image = logit_scale * sim_i2t
        logits_per_text = logit_scale * sim_t2i.t()
        logit_bias = getattr(self, "logit_bias", None)
        if logit_bias is not None:
            # As SiglipModel: with the sigmoid loss, sigmoid(logits) is the model's match probability of a pair.
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias

        loss = self._contrastive_loss(image, text, logit_scale, image_ids) if return_loss else None
        output = self._output_class(
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

    def _contrastive_loss(
        self,
        image: RetrievalEmbeddings,
        text: RetrievalEmbeddings,
        logit_scale: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The configured loss (symmetric InfoNCE, or SigLIP's sigmoid loss when the model has a `logit_bias`) of
        the local batch against the keys of every rank (one rank: the batch itself)."""
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
        logit_bias = getattr(self, "logit_bias", None)
        if logit_bias is not None:
            return sigmoid_contrastive_loss(
                logit_scale * i2t + logit_bias, logit_scale * t2i.t() + logit_bias, offset, image_ids, all_ids
            )
        return image_text_contrastive_loss(logit_scale * i2t, logit_scale * t2i.t(), offset, image_ids, all_ids)

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
