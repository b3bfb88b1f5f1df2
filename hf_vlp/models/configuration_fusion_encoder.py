"""Configuration of the hf-vlp fusion encoder (ALBEF / R2D2 / BridgeTower style).

This file is shipped inside every saved model folder (Hub custom code), so it imports only
transformers and its sibling files, never `hf_vlp.*`.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from .configuration_base import VLPConfig


__all__ = ["FusionEncoderConfig"]

FUSION_MODES = ("albef", "two_way")
ITM_NEGATIVE_MODES = ("sample", "hardest")
DEFAULT_PROJECTION_DIM = 256
LOSS_WEIGHTS = ("itc_weight", "itm_weight", "mlm_weight", "target_distill_weight", "feature_distill_weight")


class FusionEncoderConfig(VLPConfig):
    r"""Configuration of the fusion encoders ([`FusionEncoderForPreTraining`], [`FusionEncoderForRetrieval`]).

    Uni-modal towers (any transformers text / vision model, as in the dual encoder) are aligned by an image-text
    contrastive loss (ITC) *before* fusion, then cross-attention layers on top of them fuse the two modalities for
    image-text matching (ITM) and masked language modelling (MLM).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the text tower; any transformers text model (default: a BERT, the shape of Chinese RoBERTa-wwm).
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower; any transformers vision model (default: a CLIP vision transformer).
        projection_dim (`int`, *optional*, defaults to 256):
            Width of the contrastive heads (`text_projection`, `visual_projection`), as in the dual encoder; ALBEF
            uses 256. A fusion model started from a dual encoder takes the dual encoder's. Configs saved before the
            families shared this name call it `embed_dim`, which is still accepted.
        logit_scale_init_value (`float`, *optional*, defaults to 2.6592):
            Initial log of the contrastive temperature's inverse (log(1/0.07), ALBEF's `temp`).
        logit_scale_max (`float`, *optional*, defaults to 100.0):
            Upper bound of `exp(logit_scale)`.
        text_pooling (`str`, *optional*, defaults to `"mean"`): `"mean"` or `"cls"`, as in the dual encoder.
        vision_pooling (`str`, *optional*, defaults to `"pooler"`): `"pooler"`, `"cls"` or `"mean"`, as in the dual
            encoder.
        num_fusion_layers (`int`, *optional*, defaults to 6):
            Cross-attention layers on top of the towers, in each cross encoder.
        fusion_mode (`str`, *optional*, defaults to `"albef"`):
            `"albef"`: one cross encoder whose text tokens attend to the image tokens. `"two_way"` (R2D2): a second
            cross encoder whose image tokens attend to the text tokens; ITM scores average the two.
        fusion_hidden_size (`int`, *optional*):
            Width of the fusion layers; defaults to the text tower's hidden size.
        fusion_num_attention_heads (`int`, *optional*): defaults to the text tower's number of heads.
        fusion_intermediate_size (`int`, *optional*): defaults to 4 x `fusion_hidden_size`.
        fusion_hidden_act (`str`, *optional*, defaults to `"gelu"`): activation of the fusion feed-forward layers.
        fusion_hidden_dropout_prob (`float`, *optional*, defaults to 0.1): dropout on residual branches.
        fusion_attention_dropout_prob (`float`, *optional*, defaults to 0.1): dropout on attention weights.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12): epsilon of the fusion layer norms.
        use_bridges (`bool`, *optional*, defaults to `False`):
            BridgeTower-style bridges: before fusion layer `l` (of N), the query stream is updated with the output
            of its tower's layer `L - N + l + 1` (`LayerNorm(h + Linear(u))`), so the top N uni-modal layers feed
            the fusion layers bottom-up instead of only the last one. Needs towers with at least N layers.
        use_momentum_encoder (`bool`, *optional*, defaults to `True`):
            Keep an exponential-moving-average copy of the model (ALBEF's momentum model): its features are the ITC
            keys and the queue entries, and its predictions the soft targets of every distillation term.
        momentum (`float`, *optional*, defaults to 0.995):
            EMA coefficient: `p_m = momentum * p_m + (1 - momentum) * p` at each `momentum_update()`.
        queue_size (`int`, *optional*, defaults to 65536):
            Momentum features kept as extra ITC negatives (0 disables the queue).
        distill_alpha (`float`, *optional*, defaults to 0.4):
            Momentum distillation weight: ITC and MLM targets are `alpha * momentum prediction + (1 - alpha) *
            ground truth` (0 disables it). The trainer may ramp it up by passing `alpha` to `forward`.
        mlm_probability (`float`, *optional*, defaults to 0.15):
            Fraction of real, non-special tokens masked for MLM (GRIT-VLP uses 0.5); 80% of them become
            `mask_token_id`, 10% a random token, 10% stay unchanged.
        mask_token_id (`int`, *optional*, defaults to 103): `[MASK]` id of the tokenizer (103 in Chinese BERTs).
        special_token_ids (`list[int]`, *optional*, defaults to `[0, 101, 102]`):
            Ids never masked (PAD, CLS, SEP of Chinese BERT vocabularies); padding is never masked either way.
        itm_negatives (`str`, *optional*, defaults to `"sample"`):
            `"sample"`: one in-batch negative per image and per text drawn with probability `softmax(similarity)`
            (ALBEF); `"hardest"`: the most similar one (GRIT-VLP, whose sampler already makes batches hard).
        itc_weight, itm_weight, mlm_weight (`float`, *optional*, default to 1.0):
            Weights of the terms in the total loss; 0 switches a term off (it is not computed). A head whose every
            term is off gets no gradient: under DDP, train with `ddp_find_unused_parameters=True` then.
        target_distill_weight (`float`, *optional*, defaults to 0.0):
            R2D2 target-guided distillation: soft cross-entropy of the ITM predictions against the momentum
            model's ITM distribution on the same pairs. Needs the momentum encoder.
        feature_distill_weight (`float`, *optional*, defaults to 0.0):
            R2D2 feature-guided distillation: the fused token features of the student, fed the masked text, match
            (cosine) those of the momentum model fed the full text. Needs the momentum encoder.
        gather_distributed (`bool`, *optional*, defaults to `True`):
            Under `torch.distributed`, ITC uses every rank's features (and the queue receives them all).
        initializer_factor (`float`, *optional*, defaults to 1.0):
            Scale of the init std (0.02) of the layers hf-vlp adds (fusion layers, heads, projections); the towers
            keep their own init.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Tie the MLM decoder to the text tower's word embeddings.

    Example:

    ```python
    >>> from hf_vlp import FusionEncoderConfig, FusionEncoderForPreTraining
    >>> config = FusionEncoderConfig.from_preset("tiny-fusion")
    >>> model = FusionEncoderForPreTraining(config)
    ```
    """

    model_type = "hf_vlp_fusion_encoder"
    preset_family = "fusion_encoder"

    def __init__(
        self,
        text_config: PreTrainedConfig | dict | None = None,
        vision_config: PreTrainedConfig | dict | None = None,
        projection_dim: int | None = None,
        logit_scale_init_value: float = 2.6592,
        logit_scale_max: float = 100.0,
        text_pooling: str = "mean",
        vision_pooling: str = "pooler",
        num_fusion_layers: int = 6,
        fusion_mode: str = "albef",
        fusion_hidden_size: int | None = None,
        fusion_num_attention_heads: int | None = None,
        fusion_intermediate_size: int | None = None,
        fusion_hidden_act: str = "gelu",
        fusion_hidden_dropout_prob: float = 0.1,
        fusion_attention_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-12,
        use_bridges: bool = False,
        use_momentum_encoder: bool = True,
        momentum: float = 0.995,
        queue_size: int = 65536,
        distill_alpha: float = 0.4,
        mlm_probability: float = 0.15,
        mask_token_id: int = 103,
        special_token_ids: list[int] | tuple[int, ...] = (0, 101, 102),
        itm_negatives: str = "sample",
        itm_negative_scale: float | None = None,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        target_distill_weight: float = 0.0,
        feature_distill_weight: float = 0.0,
        gather_distributed: bool = True,
        initializer_factor: float = 1.0,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self._set_towers(text_config, vision_config)
        self.projection_dim = _projection_dim(projection_dim, kwargs)
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_scale_max = logit_scale_max
        self.text_pooling = text_pooling
        self.vision_pooling = vision_pooling
        self.num_fusion_layers = num_fusion_layers
        self.fusion_mode = fusion_mode
        # Resolved here rather than at model build time so that config.json states the real architecture.
        self.fusion_hidden_size = fusion_hidden_size or self.text_config.hidden_size
        self.fusion_num_attention_heads = fusion_num_attention_heads or self.text_config.num_attention_heads
        self.fusion_intermediate_size = fusion_intermediate_size or 4 * self.fusion_hidden_size
        self.fusion_hidden_act = fusion_hidden_act
        self.fusion_hidden_dropout_prob = fusion_hidden_dropout_prob
        self.fusion_attention_dropout_prob = fusion_attention_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.use_bridges = use_bridges
        self.use_momentum_encoder = use_momentum_encoder
        self.momentum = momentum
        self.queue_size = queue_size
        self.distill_alpha = distill_alpha
        self.mlm_probability = mlm_probability
        self.mask_token_id = mask_token_id
        self.special_token_ids = [int(i) for i in special_token_ids]
        self.itm_negatives = itm_negatives
        self.itm_negative_scale = itm_negative_scale
        self.itc_weight = itc_weight
        self.itm_weight = itm_weight
        self.mlm_weight = mlm_weight
        self.target_distill_weight = target_distill_weight
        self.feature_distill_weight = feature_distill_weight
        self.gather_distributed = gather_distributed
        self.initializer_factor = initializer_factor
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(**kwargs)
        self.check_options()

    def check_options(self) -> None:
        """Refuse misspelt modes and impossible settings at construction, not hours into a run."""
        self._check_choices({"fusion_mode": FUSION_MODES, "itm_negatives": ITM_NEGATIVE_MODES})
        if self.num_fusion_layers < 1:
            raise ValueError(f"num_fusion_layers must be >= 1, got {self.num_fusion_layers}")
        if self.fusion_hidden_size % self.fusion_num_attention_heads != 0:
            raise ValueError(
                f"fusion_hidden_size={self.fusion_hidden_size} is not a multiple of "
                f"fusion_num_attention_heads={self.fusion_num_attention_heads}"
            )
        for name in ("momentum", "distill_alpha", "mlm_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.itm_negative_scale is not None and self.itm_negative_scale < 0:
            raise ValueError(f"itm_negative_scale must be >= 0 or None, got {self.itm_negative_scale}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        for name in LOSS_WEIGHTS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.use_momentum_encoder:
            for name in ("target_distill_weight", "feature_distill_weight"):
                if getattr(self, name) > 0:
                    raise ValueError(f"{name} > 0 distils from the momentum model: set use_momentum_encoder=True")

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each pre-training loss term in the total, keyed by its output field (`itc_loss` ...)."""
        return {name.replace("_weight", "_loss"): getattr(self, name) for name in LOSS_WEIGHTS}


def _projection_dim(projection_dim: int | None, kwargs: dict) -> int:
    """`projection_dim`, or the old name `embed_dim` (popped from `kwargs`) of configs saved before the rename."""
    legacy = kwargs.pop("embed_dim", None)
    if legacy is not None and projection_dim is not None and legacy != projection_dim:
        raise ValueError(f"embed_dim={legacy} is the old name of projection_dim={projection_dim}: give one of them")
    return projection_dim if projection_dim is not None else legacy if legacy is not None else DEFAULT_PROJECTION_DIM
