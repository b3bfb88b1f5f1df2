"""Training mechanics of the fusion encoder as small pure functions: ITM hard negatives, MLM masking,
distillation targets and losses, the momentum EMA and the feature queue.

They are kept apart from the model so each can be pinned by a hand-made test, and so the trainer or other
models can reuse them. Shipped with saved models (Hub custom code): imports torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


__all__ = [
    "distillation_targets",
    "ema_update_",
    "feature_distillation_loss",
    "hard_negative_weights",
    "mask_tokens",
    "masked_lm_loss",
    "masked_token_index",
    "negative_exclusion_mask",
    "ring_buffer_enqueue_",
    "sample_hard_negatives",
    "soft_target_loss",
]

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------ ITM hard negatives


def negative_exclusion_mask(
    batch_size: int,
    image_ids: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(B, B) bool: True where pair member j must never serve as a negative for pair i.

    Excluded are j = i (the positive), every j with the same image id (another caption of the same image, or the
    same image again) and every j whose caption is token-for-token identical to i's (the same caption on another
    image: a "negative" that is a correct description). The relation is symmetric, so one mask serves both the
    negative texts of each image and the negative images of each text.
    """
    exclude = torch.eye(batch_size, dtype=torch.bool, device=device)
    if image_ids is not None:
        exclude = exclude | (image_ids.view(-1, 1) == image_ids.view(1, -1))
    if input_ids is not None:
        exclude = exclude | (input_ids[:, None, :] == input_ids[None, :, :]).all(dim=-1)
    return exclude


def hard_negative_weights(similarity: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Sampling weights of in-batch negatives: softmax of each row's similarities over its allowed entries.

    ALBEF takes `softmax(sim)` and zeroes the positive; renormalising over the allowed entries instead gives the
    same sampling distribution but cannot underflow to an all-zero row when the positive dominates the softmax
    (a real risk at `logit_scale` 100). Rows with no allowed entry are all zero.
    """
    logits = similarity.float().masked_fill(exclude, float("-inf"))
    has_negative = (~exclude).any(dim=1, keepdim=True)
    return torch.where(has_negative, logits.softmax(dim=1), torch.zeros_like(logits))


def sample_hard_negatives(
    weights: torch.Tensor, hardest: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative column per row of `weights` (B, B): drawn with probability ∝ weight, or the heaviest.

    Returns `(indices, valid)`: `valid` is False for rows without any allowed negative (e.g. a batch of captions
    of one image); their index is arbitrary and their negative pair must be ignored by the loss.
    """
    valid = weights.sum(dim=1) > 0
    safe = torch.where(valid[:, None], weights, torch.ones_like(weights))
    if hardest:
        return safe.argmax(dim=1), valid
    return torch.multinomial(safe, 1, generator=generator).squeeze(1), valid


# -------------------------------------------------------------------------------------------------- MLM


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    special_token_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each real, non-special token is selected with `probability`; of those 80% become
    `mask_token_id`, 10% a uniformly random token and 10% stay unchanged.

    Returns `(masked_input_ids, labels)` with labels = the original id at selected positions, -100 elsewhere.
    Padding (`attention_mask == 0`) and `special_token_ids` (PAD, CLS, SEP) are never selected.
    """
    eligible = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if len(special_token_ids):
        specials = torch.tensor(list(special_token_ids), dtype=input_ids.dtype, device=input_ids.device)
        eligible = eligible & ~torch.isin(input_ids, specials)
    selected = (torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < probability) & eligible
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    masked = torch.where(selected & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels


# --------------------------------------------------------------------------------------------- distillation


def distillation_targets(teacher_probs: torch.Tensor, hard_targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """ALBEF momentum distillation targets: `alpha * teacher + (1 - alpha) * ground truth` (rows stay distributions)."""
    return alpha * teacher_probs + (1.0 - alpha) * hard_targets


def soft_target_loss(
    logits: torch.Tensor, target_probs: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the `valid` rows of the cross-entropy `-sum(target * log_softmax(logits))`; 0 if none is valid."""
    per_row = -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    if valid is None:
        return per_row.mean()
    return (per_row * valid).sum() / valid.sum().clamp(min=1)


def masked_token_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (into `labels.flatten()`, row-major) of the masked tokens, i.e. where labels != -100.

    Gather the fused states there (`states.flatten(0, -2).index_select(0, index)`) before the MLM head, so that
    only the masked ~15% of the tokens are projected to the vocabulary. One host sync (the count is data-dependent).
    """
    return (labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)


def masked_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, soft_targets: torch.Tensor | None = None, alpha: float = 0.0
) -> torch.Tensor:
    """MLM cross-entropy over the masked tokens (labels != -100), with optional momentum distillation.

    With `soft_targets` (the momentum model's token distributions, same shape as `logits`) the target of each
    masked token is `distillation_targets(soft, one_hot(label), alpha)`, i.e. ALBEF's
    `(1 - alpha) * CE + alpha * soft CE`. A batch with no masked token gives 0 (not NaN).

    `logits` may cover every position (`(..., V)` with -100 labels where nothing is masked) or, as the fusion model
    passes them, only the masked positions (`(N, V)` logits, `(N,)` labels, see `masked_token_index`); the value is
    the same. No one-hot or other vocabulary-sized target is built: the hard term is a gather of the log-softmax.
    """
    selected = labels != IGNORE_INDEX
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_token = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if soft_targets is not None and alpha > 0:
        soft_ce = -(soft_targets.float() * log_probs).sum(dim=-1)
        per_token = (1.0 - alpha) * per_token + alpha * soft_ce
    return per_token.masked_fill(~selected, 0.0).sum() / selected.sum().clamp(min=1)


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over real tokens of `1 - cos(student, teacher)`: R2D2's feature-guided distillation distance."""
    distance = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    if mask is None:
        return distance.mean()
    mask = mask.to(distance.dtype)
    return (distance * mask).sum() / mask.sum().clamp(min=1)


# ------------------------------------------------------------------------------------------ momentum, queue


@torch.no_grad()
def ema_update_(momentum_params: Sequence[torch.Tensor], online_params: Sequence[torch.Tensor], momentum: float):
    """In place, for every pair: `p_m = momentum * p_m + (1 - momentum) * p` (one fused kernel per step)."""
    momentum_params, online_params = list(momentum_params), list(online_params)
    torch._foreach_mul_(momentum_params, momentum)
    torch._foreach_add_(momentum_params, online_params, alpha=1.0 - momentum)


@torch.no_grad()
def ring_buffer_enqueue_(buffers: Sequence[torch.Tensor], values: Sequence[torch.Tensor], pointer: torch.Tensor):
    """Write `values[i]` (n rows) into `buffers[i]` (size rows) from row `pointer`, wrapping around; advance it.

    The oldest rows are overwritten first. When n > size only the last `size` rows survive, at the slots they
    would have reached. Everything stays on the device (no host sync for the pointer).
    """
    size = buffers[0].shape[0]
    count = values[0].shape[0]
    kept = min(count, size)
    slots = (pointer + (count - kept) + torch.arange(kept, device=pointer.device)) % size
    for buffer, value in zip(buffers, values):
        buffer[slots] = value[count - kept :].to(buffer.dtype)
    pointer.copy_((pointer + count) % size)
