"""Gradient comparisons shared by the distributed-training workers (`torchrun` on CPU) of the test suite."""

from __future__ import annotations

import torch
from torch import nn


__all__ = ["max_relative_error", "parameter_grads"]


def parameter_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter gradient, by parameter name (parameters without one are left out)."""
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def max_relative_error(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """The largest difference between two sets of gradients, relative to each tensor's largest gradient (inf when
    they name different parameters).

    The denominator is floored at 1e-3 of the largest gradient of all: attention key biases get ~1e-9 gradients
    (softmax is shift-invariant), whose float32 noise is not an error.
    """
    if actual.keys() != expected.keys():
        return float("inf")
    floor = 1e-3 * max(float(v.abs().max()) for v in expected.values())
    return max(float((actual[k] - v).abs().max()) / max(float(v.abs().max()), floor) for k, v in expected.items())
