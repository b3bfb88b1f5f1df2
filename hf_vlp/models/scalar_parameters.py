"""Learned scalars (`logit_scale`, `logit_bias`): one-element vectors in memory, 0-d tensors on disk.

Why two shapes: torch's FSDP2 `fully_shard` refuses 0-d parameters on every device ("Change logit_scale to a 1D
tensor with numel equal to 1"; FSDP1's state-dict handling has tripped on them too, pytorch PR 132934), so in memory
each learned scalar is a `[1]` parameter. On disk it stays what CLIP,
Chinese-CLIP and hf-vlp folders saved before this change store: a 0-d tensor. So older folders load into the new
models, new folders load into older hf-vlp releases, and a converted dual encoder still maps back onto
`ChineseCLIPModel` / cn-clip one-to-one.

The two shapes meet at the two ways weights come in and the one way they go out:

- `from_pretrained` (installed or as Hub custom code): a transformers weight conversion registered per `model_type`
  (`register_scalar_conversions`) reshapes a stored scalar to `[1]` before the shape check (transformers 5 refuses
  `[]` into `[1]` otherwise);
- `save_pretrained` (also of the full state dict FSDP2 gathers for it): transformers reverts the same conversion,
  which writes the scalar back 0-d;
- `load_state_dict` (the Trainer's resume from a checkpoint folder, conversions): `vectorize_scalars` in the
  model's `_load_from_state_dict` reshapes the scalar of a 0-d state dict.

`model.state_dict()` itself holds the in-memory `[1]` shape, so what torch saves and reloads without transformers
(distributed checkpoints, optimizer state) has one shape throughout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import ConversionOps, WeightConverter
from transformers.conversion_mapping import register_checkpoint_conversion_mapping


__all__ = [
    "SCALAR_PARAMETER_NAMES",
    "register_scalar_conversions",
    "scalar_parameter",
    "vectorize_scalars",
]

# The top-level parameters of an hf-vlp model that are single learned numbers.
SCALAR_PARAMETER_NAMES = ("logit_scale", "logit_bias")


def scalar_parameter(value: float) -> nn.Parameter:
    """A learned scalar as FSDP2 can shard it: a parameter of shape `[1]` (it broadcasts like a 0-d tensor)."""
    return nn.Parameter(torch.tensor([float(value)]))


def vectorize_scalars(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    """Reshape, in place, the 0-d learned scalars under `prefix` of a state dict to the in-memory `[1]`."""
    for name in SCALAR_PARAMETER_NAMES:
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            state_dict[prefix + name] = value.reshape(1)


class _Reshape(ConversionOps):
    """Reshape the one tensor of a one-to-one conversion: `()` on save, `(1,)` on load (either stored shape)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"

    @torch.no_grad()
    def convert(
        self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str], **kwargs
    ) -> dict[str, torch.Tensor]:
        (tensors,) = input_dict.values()
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        # the key keeps its name; the pattern names several keys, so the key is the one this call converts
        return {kwargs["full_layer_name"]: tensor.reshape(self.shape)}

    @property
    def reverse_op(self) -> ConversionOps:
        return _Reshape(() if self.shape == (1,) else (1,))


def register_scalar_conversions(model_type: str) -> None:
    """Register, for the models of `model_type`, the load-side reshape of the stored 0-d scalars to `[1]` (and with
    it the save-side reshape back to 0-d). Called when a modeling file is imported, also as Hub custom code; a second
    import replaces the same mapping."""
    # One pattern for all the names (a model may lack some: `logit_bias` only exists with the sigmoid loss).
    names = "|".join(SCALAR_PARAMETER_NAMES)
    conversion = WeightConverter(source_patterns=f"({names})", target_patterns=r"\1", operations=[_Reshape((1,))])
    register_checkpoint_conversion_mapping(model_type, [conversion], overwrite=True)
