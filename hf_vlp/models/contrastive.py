"""Contrastive objectives and similarity functions shared by the dual and fusion encoders.

Shipped with saved models (Hub custom code): imports torch only.

Why these live apart from the models: the same pieces (cross-rank gathering with gradient, multi-positive
targets, FILIP token-wise similarity) serve the dual encoder's loss, the fusion encoder's ITC, the trainer's
gradient cache and the retrieval evaluation, and must compute exactly the same thing everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .retrieval_core import gather_varlen


__all__ = [
    "gather_with_grad",
    "contrastive_targets",
    "soft_cross_entropy",
    "image_text_contrastive_loss",
    "token_wise_similarity",
]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0, keeping the autograd graph (ranks may hold different
    shapes): `retrieval_core.gather_varlen` with gradient, the gather of the distributed contrastive losses."""
    return gather_varlen(tensor, with_grad=True)


def contrastive_targets(
    num_queries: int,
    num_keys: int,
    offset: int = 0,
    query_ids: torch.Tensor | None = None,
    key_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Target distribution over keys for each query, shape (num_queries, num_keys).

    Without ids, query i's only positive is key `offset + i` (its own pair; `offset` is this rank's start in a
    gathered batch). With ids (e.g. the image id of each pair), every key with the same id is a positive and
    the target spreads evenly over them, as ALBEF's retrieval fine-tuning does, so two captions of one image
    are never pushed apart as negatives.
    """
    if query_ids is None or key_ids is None:
        targets = torch.zeros(num_queries, num_keys, device=device)
        targets[torch.arange(num_queries, device=device), torch.arange(num_queries, device=device) + offset] = 1.0
        return targets
    positives = (query_ids.view(-1, 1) == key_ids.view(1, -1)).float()
    return positives / positives.sum(dim=1, keepdim=True).clamp(min=1.0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution per row (one-hot targets give the usual CE)."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def image_text_contrastive_loss(
    logits_per_image: torch.Tensor,
    logits_per_text: torch.Tensor,
    offset: int = 0,
    image_ids: torch.Tensor | None = None,
    all_image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over local queries against (possibly gathered) keys.

    `logits_per_image` is (local images, all texts) and `logits_per_text` is (local texts, all images): the
    "local loss" layout, linear in memory in the world size. `image_ids` of the local pairs and
    `all_image_ids` of the gathered pairs make pairs sharing an image positives of each other.
    """
    num_local, num_all = logits_per_image.shape
    if image_ids is None or all_image_ids is None:
        # One positive per query: class-index cross-entropy has the value and gradient of the soft form against
        # one-hot targets without building the dense (local, all) target matrix and its products: two fewer
        # batch x batch buffers at the loss's peak. Those buffers are what grows with the contrastive batch under
        # gradient caching (benchmarks/bench_grad_cache.py).
        labels = torch.arange(offset, offset + num_local, device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    targets = contrastive_targets(
        num_local, num_all, offset, image_ids, all_image_ids, device=logits_per_image.device
    ).to(logits_per_image.dtype)
    return (soft_cross_entropy(logits_per_image, targets) + soft_cross_entropy(logits_per_text, targets)) / 2


def token_wise_similarity(
    image_tokens: torch.Tensor,
    image_mask: torch.Tensor | None,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor | None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP token-wise late interaction between every image and every text.

    Args:
        image_tokens: (num_images, image_len, dim), L2-normalised.
        image_mask: (num_images, image_len) 1 for real tokens, or None for all real.
        text_tokens: (num_texts, text_len, dim), L2-normalised.
        text_mask: (num_texts, text_len) 1 for real tokens (padding 0), or None.
        chunk_size: texts scored at once; memory is chunk x num_images x image_len x text_len.

    Returns:
        `(sim_i2t, sim_t2i)`, both (num_images, num_texts) before the temperature: for image i and text j,
        `sim_i2t[i, j]` is the mean over i's real tokens of each token's max similarity to j's real tokens, and
        `sim_t2i[i, j]` the mean over j's real tokens of each token's max similarity to i's real tokens.
        Padding never wins a max and never enters a mean.
    """
    num_images, image_len, _ = image_tokens.shape
    num_texts, text_len, _ = text_tokens.shape
    if image_mask is None:
        image_mask = image_tokens.new_ones(num_images, image_len)
    if text_mask is None:
        text_mask = text_tokens.new_ones(num_texts, text_len)
    image_mask = image_mask.to(image_tokens.dtype)
    text_mask = text_mask.to(text_tokens.dtype)
    neg = torch.finfo(image_tokens.dtype).min
    image_valid = image_mask.sum(dim=1).clamp(min=1)  # (I,)
    sim_i2t_chunks, sim_t2i_chunks = [], []
    for start in range(0, num_texts, chunk_size):
        t_tok = text_tokens[start : start + chunk_size]
        t_mask = text_mask[start : start + chunk_size]
        # (I, T, image_len, text_len)
        token_sims = torch.einsum("ikd,jrd->ijkr", image_tokens, t_tok)
        i2t_max = token_sims.masked_fill(t_mask[None, :, None, :] == 0, neg).amax(dim=3)  # (I, T, image_len)
        sim_i2t_chunks.append((i2t_max * image_mask[:, None, :]).sum(dim=2) / image_valid[:, None])
        t2i_max = token_sims.masked_fill(image_mask[:, None, :, None] == 0, neg).amax(dim=2)  # (I, T, text_len)
        text_valid = t_mask.sum(dim=1).clamp(min=1)
        sim_t2i_chunks.append((t2i_max * t_mask[None, :, :]).sum(dim=2) / text_valid[None, :])
    return torch.cat(sim_i2t_chunks, dim=1), torch.cat(sim_t2i_chunks, dim=1)
