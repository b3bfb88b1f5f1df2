"""Configuration of the hf-vlp dual encoder (CLIP / Chinese-CLIP / Wukong style).

This file is shipped inside every saved model folder (Hub custom code), so it imports only
transformers and its sibling files, never `hf_vlp.*`.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

from .configuration_base import VLPConfig, build_sub_config


__all__ = ["DualEncoderConfig", "build_sub_config"]

SIMILARITY_MODES = ("global", "token_wise")
TOKEN_REDUCTION_MODES = ("none", "norm", "learned")
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")
# CLIP's log(1/0.07) for the softmax loss; SigLIP's log(10) for the sigmoid loss.
DEFAULT_LOGIT_SCALE_INIT = {"softmax": 2.6592, "sigmoid": math.log(10.0)}


class DualEncoderConfig(VLPConfig):
    r"""Configuration of a [`DualEncoderModel`]: any transformers text tower plus any vision tower.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the text tower; any transformers text model (default: a BERT, the shape of Chinese
            RoBERTa-wwm).
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower; any transformers vision model (default: a CLIP vision transformer).
        projection_dim (`int`, *optional*, defaults to 512):
            Width of the shared embedding space both towers are projected into.
        logit_scale_init_value (`float`, *optional*):
            Initial log of the contrastive temperature's inverse: by default CLIP's log(1/0.07) = 2.6592 with the
            softmax loss, SigLIP's log(10) with the sigmoid loss.
        logit_scale_max (`float`, *optional*, defaults to 100.0):
            Upper bound of `exp(logit_scale)`, as CLIP clamps it, so training cannot make the softmax degenerate.
        text_pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"` (mean over non-padding tokens) or `"cls"` (first token, as Chinese-CLIP, whose conversions and
            presets set it). Mean is the default for new models: at initialisation a BERT's first-token states of
            different captions are nearly identical (pairwise cosine 0.999 against 0.885 for the mean), and a
            fresh model pooled that way stays on the ln(batch) loss plateau much longer
            (`benchmarks/bench_quality.py`, row `text_cls_pooling`).
        vision_pooling (`str`, *optional*, defaults to `"pooler"`):
            `"pooler"` (the tower's own `pooler_output`, falling back to the first token when it has none),
            `"cls"` or `"mean"`. (A fresh ViT's tanh pooler is no handicap: on the real-data benchmark it scored
            11.2 against 10.6 with `"cls"`, `benchmarks/bench_quality.py` rows `vit_*`.)
        similarity (`str`, *optional*, defaults to `"global"`):
            `"global"` cosine of pooled embeddings (CLIP) or `"token_wise"` late interaction (FILIP, as Wukong).
        token_reduction (`str`, *optional*, defaults to `"none"`):
            How token-wise similarity reduces tokens first (Wukong's reduced token interaction): `"none"`,
            `"norm"` (keep the tokens with the largest projected norm) or `"learned"` (a TokenLearner-style
            layer pools the tokens into `image_tokens_kept` / `text_tokens_kept` learned mixtures).
        image_tokens_kept (`int`, *optional*):
            Image tokens left after reduction (Wukong uses 12); `None` keeps all.
        text_tokens_kept (`int`, *optional*):
            Text tokens left after reduction; `None` keeps all.
        token_similarity_chunk_size (`int`, *optional*, defaults to 64):
            Texts scored at once in token-wise similarity, bounding memory at chunk x images x tokens^2.
        lock_vision (`bool`, *optional*, defaults to `False`):
            Locked-image tuning (LiT): freeze the vision tower.
        lock_vision_unlocked_layers (`int`, *optional*, defaults to 0):
            With `lock_vision`, leave the last N transformer layers (and what follows them) trainable.
        lock_text (`bool`, *optional*, defaults to `False`):
            Freeze the text tower.
        lock_text_unlocked_layers (`int`, *optional*, defaults to 0):
            With `lock_text`, leave its last N layers trainable.
        gather_distributed (`bool`, *optional*, defaults to `True`):
            Under `torch.distributed`, use every rank's embeddings as negatives (gathered with gradient).
        contrastive_loss (`str`, *optional*, defaults to `"softmax"`):
            `"softmax"`: symmetric InfoNCE (CLIP). `"sigmoid"`: SigLIP's pairwise sigmoid loss, every image-text
            pair an independent binary match with a learned bias (`logit_bias`); no softmax over the batch, so it
            does not need the batch to hold a pair's only positive, and it gathers across ranks like InfoNCE.
        logit_bias_init_value (`float`, *optional*, defaults to -10.0):
            Initial `logit_bias` of the sigmoid loss (SigLIP's -10: at the start almost every pair is a negative,
            which keeps the first steps from being dominated by the many negatives).
        vision_patch_dropout (`float`, *optional*, defaults to 0.0):
            FLIP random patch dropout: in training mode, drop this share of the image's patch tokens (a new random
            subset per image; CLS and register tokens are kept), which divides the vision tower's cost by about
            `1 / (1 - rate)`. The full image is used in eval mode, and 0 changes nothing. Only vision transformers
            whose embeddings add absolute position embeddings (ViT, CLIP vision, DINOv2, SigLIP vision) can take
            it; hierarchical or convolutional towers are refused at construction. Give it when the model is built
            or loaded (`from_pretrained(..., vision_patch_dropout=0.5)`): the hook is attached then. A fully locked
            vision tower (LiT) stays in eval mode and so always sees the whole image.

    Example:

    ```python
    >>> from hf_vlp import DualEncoderConfig, DualEncoderModel
    >>> config = DualEncoderConfig.from_preset("tiny")
    >>> model = DualEncoderModel(config)
    ```
    """

    model_type = "hf_vlp_dual_encoder"
    preset_family = "dual_encoder"

    def __init__(
        self,
        text_config: PreTrainedConfig | dict | None = None,
        vision_config: PreTrainedConfig | dict | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float | None = None,
        logit_scale_max: float = 100.0,
        text_pooling: str = "mean",
        vision_pooling: str = "pooler",
        similarity: str = "global",
        token_reduction: str = "none",
        image_tokens_kept: int | None = None,
        text_tokens_kept: int | None = None,
        token_similarity_chunk_size: int = 64,
        lock_vision: bool = False,
        lock_vision_unlocked_layers: int = 0,
        lock_text: bool = False,
        lock_text_unlocked_layers: int = 0,
        gather_distributed: bool = True,
        initializer_factor: float = 1.0,
        contrastive_loss: str = "softmax",
        logit_bias_init_value: float = -10.0,
        vision_patch_dropout: float = 0.0,
        **kwargs,
    ):
        self._set_towers(text_config, vision_config)
        self.projection_dim = projection_dim
        self.logit_scale_init_value = (
            logit_scale_init_value
            if logit_scale_init_value is not None
            else DEFAULT_LOGIT_SCALE_INIT.get(contrastive_loss, DEFAULT_LOGIT_SCALE_INIT["softmax"])
        )
        self.logit_scale_max = logit_scale_max
        self.text_pooling = text_pooling
        self.vision_pooling = vision_pooling
        self.similarity = similarity
        self.token_reduction = token_reduction
        self.image_tokens_kept = image_tokens_kept
        self.text_tokens_kept = text_tokens_kept
        self.token_similarity_chunk_size = token_similarity_chunk_size
        self.lock_vision = lock_vision
        self.lock_vision_unlocked_layers = lock_vision_unlocked_layers
        self.lock_text = lock_text
        self.lock_text_unlocked_layers = lock_text_unlocked_layers
        self.gather_distributed = gather_distributed
        self.initializer_factor = initializer_factor
        self.contrastive_loss = contrastive_loss
        self.logit_bias_init_value = logit_bias_init_value
        self.vision_patch_dropout = vision_patch_dropout
        super().__init__(**kwargs)
        self.check_options()

    def check_options(self) -> None:
        """Refuse misspelt modes and impossible sizes at construction, not hours into a run."""
        self._check_choices(
            {
                "similarity": SIMILARITY_MODES,
                "token_reduction": TOKEN_REDUCTION_MODES,
                "contrastive_loss": CONTRASTIVE_LOSSES,
            }
        )
        for name in ("image_tokens_kept", "text_tokens_kept"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1 or None, got {value}")
        if self.token_reduction == "learned" and (self.image_tokens_kept is None or self.text_tokens_kept is None):
            raise ValueError("token_reduction='learned' needs both image_tokens_kept and text_tokens_kept")
        if not 0.0 <= self.vision_patch_dropout < 1.0:
            raise ValueError(f"vision_patch_dropout must be in [0, 1), got {self.vision_patch_dropout}")
