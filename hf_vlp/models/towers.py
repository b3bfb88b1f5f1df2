"""Uni-modal towers: build any transformers text / vision model, pool it, and lock (LiT) parts of it.

Shipped with saved models (Hub custom code): imports torch and transformers only.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto.modeling_auto import MODEL_MAPPING


__all__ = [
    "tower_class_and_kwargs",
    "build_tower",
    "load_tower",
    "pool_text",
    "pool_vision",
    "vision_tokens",
    "vision_width",
    "present",
    "text_tower_features",
    "vision_tower_features",
    "tower_layers",
    "lock_tower",
]


def tower_class_and_kwargs(config: PreTrainedConfig, drop_pooler: bool) -> tuple[type[PreTrainedModel], dict]:
    """The base-model class of `config` (what `AutoModel` would pick) and its constructor options.

    `drop_pooler` skips BERT-style pooling layers that CLS / mean pooling never uses: unused parameters
    make DDP fail and waste optimizer state. Only models whose constructor takes `add_pooling_layer`
    are affected; other towers are built as they are.
    """
    model_class = MODEL_MAPPING[type(config)]
    kwargs = {}
    if drop_pooler and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    return model_class, kwargs


def build_tower(config: PreTrainedConfig, drop_pooler: bool) -> PreTrainedModel:
    """A tower with random weights, as `AutoModel.from_config` builds it."""
    model_class, kwargs = tower_class_and_kwargs(config, drop_pooler)
    return AutoModel.from_config(config, **kwargs) if kwargs else model_class._from_config(config)


def load_tower(name_or_path: str, config: PreTrainedConfig, drop_pooler: bool, **kwargs) -> PreTrainedModel:
    """A tower with pretrained weights from a Hub id or folder; a composite checkpoint (e.g. a whole CLIP)
    gives the tower that `config`'s class names, as `CLIPVisionModel.from_pretrained(clip_id)` does."""
    model_class, tower_kwargs = tower_class_and_kwargs(config, drop_pooler)
    return model_class.from_pretrained(name_or_path, **tower_kwargs, **kwargs)


def pool_text(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Pool text token states: `"cls"` takes the first token (Chinese-CLIP), `"mean"` averages real tokens."""
    if mode == "cls":
        return last_hidden_state[:, 0]
    if attention_mask is None:
        return last_hidden_state.mean(dim=1)
    mask = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def pool_vision(outputs, mode: str) -> torch.Tensor:
    """Pool a vision tower's output; `"pooler"` uses its own `pooler_output` when it has one."""
    if mode == "pooler" and getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output
    hidden = outputs.last_hidden_state
    if hidden.dim() == 4:  # convolutional towers: (B, C, H, W)
        hidden = hidden.flatten(2).transpose(1, 2)
    return hidden.mean(dim=1) if mode == "mean" else hidden[:, 0]


def vision_tokens(outputs) -> torch.Tensor:
    """Token states of a vision tower as (B, tokens, hidden), for token-wise similarity."""
    hidden = outputs.last_hidden_state
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden


def tower_layers(tower: nn.Module) -> nn.ModuleList | None:
    """The tower's stack of transformer blocks: the ModuleList holding the most parameters.

    Found structurally rather than by attribute name, because the name differs between architectures
    (`encoder.layer` in BERT, `encoder.layers` in CLIP, `layers` in v5 ViT, stages in Swin).
    """
    best, best_count = None, 0
    for module in tower.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = module, count
    return best


def lock_tower(tower: nn.Module, unlocked_layers: int = 0) -> list[str]:
    """Freeze a tower (LiT), leaving its last `unlocked_layers` blocks and everything after them trainable.

    Returns the names of the parameters left trainable. "After" follows registration order, which in
    transformers towers is embeddings, blocks, then final norms / poolers: the top of the network.
    """
    for param in tower.parameters():
        param.requires_grad_(False)
    if unlocked_layers <= 0:
        return []
    layers = tower_layers(tower)
    if layers is None:
        raise ValueError(f"cannot find the transformer blocks of {type(tower).__name__} to unlock")
    unlocked_layers = min(unlocked_layers, len(layers))
    first_unlocked = {id(p) for p in layers[len(layers) - unlocked_layers].parameters()}
    trainable, unlocking = [], False
    for name, param in tower.named_parameters():
        unlocking = unlocking or id(param) in first_unlocked
        if unlocking:
            param.requires_grad_(True)
            trainable.append(name)
    return trainable


def vision_width(vision_config: PreTrainedConfig) -> int:
    """Width of a vision tower's pooled output (hierarchical towers such as Swin grow their width)."""
    return getattr(vision_config, "num_features", None) or vision_config.hidden_size


def present(**kwargs) -> dict:
    """Only the keyword arguments that were given: towers differ in which inputs they accept."""
    return {k: v for k, v in kwargs.items() if v is not None}


def text_tower_features(
    tower: nn.Module,
    projection: nn.Module,
    pooling: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> BaseModelOutputWithPooling:
    """Run a text tower and project its pooled state: the tower's output with `pooler_output` = projected
    (unnormalised) embedding, transformers 5's `get_text_features` convention. Shared by every model family
    (and by the fusion encoder's momentum copy), so all of them embed text identically.

    Always returns a `BaseModelOutputWithPooling`: a `return_dict` in `kwargs` is dropped, not passed to the tower
    (which must return one to be read here); the models' `get_*_features` turn it into a tuple when asked, as
    transformers' `can_return_tuple` does for CLIP."""
    kwargs.pop("return_dict", None)
    outputs = tower(
        **present(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        ),
        return_dict=True,
        **kwargs,
    )
    pooled = pool_text(outputs.last_hidden_state, attention_mask, pooling)
    return BaseModelOutputWithPooling(
        last_hidden_state=outputs.last_hidden_state,
        pooler_output=projection(pooled),
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def vision_tower_features(
    tower: nn.Module, projection: nn.Module, pooling: str, pixel_values: torch.Tensor, **kwargs
) -> BaseModelOutputWithPooling:
    """Run a vision tower and project its pooled state (see `text_tower_features`); `last_hidden_state` is
    always (batch, tokens, hidden), convolutional towers included."""
    kwargs.pop("return_dict", None)
    outputs = tower(pixel_values=pixel_values, return_dict=True, **kwargs)
    return BaseModelOutputWithPooling(
        last_hidden_state=vision_tokens(outputs),
        pooler_output=projection(pool_vision(outputs, pooling)),
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )
