"""The momentum (EMA) model of fusion pre-training: copying, freezing, updating and resizing it, and its queue.

ALBEF's momentum model is every sub-module of the online model again with the suffix `_m`; its features are the ITC
keys and queue entries and its predictions the distillation targets. The bookkeeping around it lives in this mixin,
apart from the model classes, because only the pre-training model has one: the retrieval class never runs it.

Shipped with saved models (Hub custom code): imports torch and sibling files only.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from .fusion_objectives import ema_update_, ring_buffer_enqueue_
from .modeling_base import MOMENTUM_SUFFIX


__all__ = ["MomentumEncoderMixin"]


class MomentumEncoderMixin:
    """The momentum-model methods of [`FusionEncoderForPreTraining`] (a mixin: it reads the model's sub-modules,
    `config.momentum` and the queue buffers through `self`).

    The momentum model is frozen (`requires_grad=False`, so an optimizer built from trainable parameters never holds
    it) and always in eval mode (deterministic targets); it changes only through `momentum_update()`.
    """

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


def _resized_rows(own: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
    """A momentum tensor resized along dim 0 to the online one's length: its own rows where both have them, the
    online rows beyond (detached copies)."""
    rows = min(own.shape[0], online.shape[0])
    resized = online.detach().clone()
    resized[:rows] = own.detach()[:rows]
    return resized
