"""Hand-made cases pinning each fusion-encoder training mechanism (hf_vlp/models/fusion_objectives.py)."""

import math

import pytest
import torch

from hf_vlp.models.fusion_objectives import (
    distillation_targets,
    ema_update_,
    feature_distillation_loss,
    hard_negative_weights,
    mask_tokens,
    masked_lm_loss,
    masked_token_index,
    negative_exclusion_mask,
    ring_buffer_enqueue_,
    sample_hard_negatives,
    soft_target_loss,
)


# ------------------------------------------------------------------------------------------ ITM negatives

# Four pairs: 0 and 1 are two captions of image 7; captions 2 and 3 are the same sentence on images 8 and 9.
IMAGE_IDS = torch.tensor([7, 7, 8, 9])
INPUT_IDS = torch.tensor([[2, 10, 11, 3], [2, 12, 13, 3], [2, 14, 15, 3], [2, 14, 15, 3]])


def test_exclusion_mask_covers_positive_same_image_and_identical_caption():
    exclude = negative_exclusion_mask(4, IMAGE_IDS, INPUT_IDS)
    expected = torch.tensor(
        [
            [True, True, False, False],  # same image id as 1
            [True, True, False, False],
            [False, False, True, True],  # identical caption to 3
            [False, False, True, True],
        ]
    )
    assert torch.equal(exclude, expected)
    assert torch.equal(negative_exclusion_mask(3), torch.eye(3, dtype=torch.bool))


def test_hard_negative_weights_are_softmax_over_allowed_entries_only():
    sim = torch.tensor(
        [
            [9.0, 5.0, 1.0, 2.0],
            [5.0, 9.0, 3.0, 0.0],
            [1.0, 3.0, 9.0, 8.0],
            [2.0, 0.0, 8.0, 9.0],
        ]
    )
    weights = hard_negative_weights(sim, negative_exclusion_mask(4, IMAGE_IDS, INPUT_IDS))
    # Row 0 may only pick 2 or 3, with probability e^1 : e^2.
    assert weights[0].tolist() == pytest.approx(
        [0.0, 0.0, math.e / (math.e + math.e**2), math.e**2 / (math.e + math.e**2)]
    )
    assert weights[2, :2].tolist() == pytest.approx(torch.tensor([1.0, 3.0]).softmax(0).tolist())
    assert (weights[:, :2][:2] == 0).all() and (weights[2:, 2:] == 0).all()


def test_weights_do_not_underflow_when_the_positive_dominates():
    # softmax(100 * cos) zeroes everything but the positive in float32: ALBEF's "softmax then zero the positive"
    # would leave an all-zero row and no negative. Renormalising over the allowed entries keeps them.
    sim = torch.tensor([[100.0, -100.0, -99.0], [-100.0, 100.0, -100.0], [-99.0, -100.0, 100.0]])
    weights = hard_negative_weights(sim, negative_exclusion_mask(3))
    assert (weights.sum(1) - 1).abs().max() < 1e-6
    assert weights[0, 2] > weights[0, 1]


def test_sampling_never_returns_excluded_and_follows_the_weights():
    sim = torch.tensor([[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    exclude = negative_exclusion_mask(4, torch.tensor([0, 1, 2, 0]))  # pairs 0 and 3 share an image
    weights = hard_negative_weights(sim, exclude)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(weights, generator=generator)[0] for _ in range(4000)])
    assert not exclude.gather(1, draws.t()).any()
    # Row 0 picks 1 or 2 with probability e^1 : e^0.
    frequency_of_1 = (draws[:, 0] == 1).float().mean().item()
    assert frequency_of_1 == pytest.approx(math.e / (math.e + 1), abs=0.03)
    hardest, valid = sample_hard_negatives(weights, hardest=True)
    assert hardest.tolist() == [1, 0, 1, 1] and valid.all()


def test_rows_without_any_valid_negative_are_flagged():
    # Every caption describes the same image: no pair can serve as a negative for any other.
    weights = hard_negative_weights(torch.randn(3, 3), negative_exclusion_mask(3, torch.tensor([5, 5, 5])))
    assert torch.equal(weights, torch.zeros(3, 3))
    indices, valid = sample_hard_negatives(weights)
    assert not valid.any() and indices.shape == (3,)
    # Exclusion is not transitive: pair 0 shares its image with pair 1 and its caption with pair 2, so it has no
    # negative, while pairs 1 and 2 (different image, different caption) are valid negatives of each other.
    exclude = negative_exclusion_mask(3, torch.tensor([5, 5, 6]), torch.tensor([[2, 40, 3], [2, 41, 3], [2, 40, 3]]))
    indices, valid = sample_hard_negatives(hard_negative_weights(torch.zeros(3, 3), exclude))
    assert valid.tolist() == [False, True, True]
    assert indices[1:].tolist() == [2, 1]


# -------------------------------------------------------------------------------------------------- MLM

CLS, SEP, PAD, MASK, VOCAB = 2, 3, 0, 4, 1000


def _text_batch(rows: int = 512, length: int = 64):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(10, VOCAB, (rows, length), generator=generator)
    lengths = torch.randint(8, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids = ids.masked_fill(mask == 0, PAD)
    return ids, mask


@pytest.mark.parametrize("probability", [0.15, 0.5])
def test_mask_ratio_and_80_10_10_split(probability):
    ids, mask = _text_batch()
    masked, labels = mask_tokens(
        ids, mask, probability, MASK, VOCAB, (PAD, CLS, SEP), generator=torch.Generator().manual_seed(2)
    )
    eligible = (mask == 1) & (ids != CLS) & (ids != SEP)
    selected = labels != -100
    assert selected.sum() / eligible.sum() == pytest.approx(probability, abs=0.01)
    assert torch.equal(labels[selected], ids[selected])
    became_mask = (masked == MASK) & selected
    unchanged = (masked == ids) & selected
    randomised = selected & ~became_mask & ~unchanged
    total = selected.sum().item()
    assert became_mask.sum().item() / total == pytest.approx(0.8, abs=0.015)
    # A random draw may hit the original token (1/VOCAB): counted with "unchanged".
    assert randomised.sum().item() / total == pytest.approx(0.1, abs=0.01)
    assert unchanged.sum().item() / total == pytest.approx(0.1, abs=0.01)
    assert torch.equal(masked[~selected], ids[~selected])


def test_special_tokens_and_padding_are_never_masked():
    ids, mask = _text_batch(rows=64, length=16)
    masked, labels = mask_tokens(ids, mask, 1.0, MASK, VOCAB, (PAD, CLS, SEP))
    protected = (mask == 0) | (ids == CLS) | (ids == SEP)
    assert (labels[protected] == -100).all()
    assert torch.equal(masked[protected], ids[protected])
    assert (labels[~protected] != -100).all()  # probability 1: every other token is selected


# --------------------------------------------------------------------------------------------- distillation


def test_distillation_targets_mix_alpha_exactly():
    teacher = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mixed = distillation_targets(teacher, hard, alpha=0.4)
    assert torch.allclose(mixed, torch.tensor([[0.68, 0.32], [0.2, 0.8]]), atol=1e-7)
    assert torch.equal(distillation_targets(teacher, hard, alpha=0.0), hard)
    assert torch.equal(distillation_targets(teacher, hard, alpha=1.0), teacher)


def test_masked_lm_loss_is_alpha_mix_of_hard_and_soft_cross_entropy():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    labels = torch.tensor([[0, -100]])
    soft = torch.tensor([[[0.1, 0.7, 0.2], [1 / 3, 1 / 3, 1 / 3]]])
    log_p = torch.log_softmax(logits[0, 0], dim=0)
    hard_ce = -log_p[0]
    soft_ce = -(soft[0, 0] * log_p).sum()
    assert masked_lm_loss(logits, labels).item() == pytest.approx(hard_ce.item())
    assert masked_lm_loss(logits, labels, soft, alpha=0.4).item() == pytest.approx(
        (0.6 * hard_ce + 0.4 * soft_ce).item()
    )
    nothing_masked = masked_lm_loss(logits.requires_grad_(), torch.full((1, 2), -100))
    assert nothing_masked.item() == 0.0
    nothing_masked.backward()  # still part of the graph: a batch without masked tokens does not break DDP


def test_masked_lm_loss_on_gathered_masked_tokens_equals_the_full_position_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator, requires_grad=True)
    soft = torch.randn(3, 5, 11, generator=generator).softmax(-1)
    labels = torch.full((3, 5), -100)
    labels[0, 1], labels[1, 4], labels[2, 0], labels[2, 3] = 7, 0, 10, 2
    index = masked_token_index(labels)
    assert index.tolist() == [1, 9, 10, 13]  # row-major, like boolean indexing
    for alpha in (0.0, 0.4, 1.0):
        full = masked_lm_loss(logits, labels, soft, alpha)
        picked = masked_lm_loss(logits.flatten(0, 1)[index], labels.flatten()[index], soft.flatten(0, 1)[index], alpha)
        torch.testing.assert_close(picked, full)
        # ALBEF's formulation: soft cross-entropy against the alpha-mixed one-hot target
        selected = labels != -100
        target = alpha * soft[selected] + (1 - alpha) * torch.nn.functional.one_hot(labels[selected], 11).float()
        reference = -(target * logits[selected].log_softmax(-1)).sum(-1).mean()
        torch.testing.assert_close(full, reference)
        grads = [torch.autograd.grad(loss, logits)[0] for loss in (picked, reference)]
        torch.testing.assert_close(*grads)
    assert masked_token_index(torch.full((2, 3), -100)).numel() == 0


def test_soft_target_loss_ignores_invalid_rows():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    first = -(targets[0] * torch.log_softmax(logits[0], 0)).sum().item()
    assert soft_target_loss(logits, targets, torch.tensor([1.0, 0.0])).item() == pytest.approx(first)


def test_feature_distillation_is_one_minus_cosine_over_real_tokens():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert feature_distillation_loss(student, teacher, mask).item() == pytest.approx((0.0 + 1.0) / 2)


# ------------------------------------------------------------------------------------------ momentum, queue


def test_ema_exact_after_k_updates():
    momentum_params = [torch.tensor([0.0, 10.0]), torch.tensor([[4.0]])]
    online_params = [torch.tensor([1.0, 0.0]), torch.tensor([[-4.0]])]
    m, k = 0.9, 5
    for _ in range(k):
        ema_update_(momentum_params, online_params, m)
    # Fixed online weights: p_m(k) = m^k p_m(0) + (1 - m^k) p.
    assert momentum_params[0].tolist() == pytest.approx([1 - m**k, 10 * m**k], abs=1e-6)
    assert momentum_params[1].item() == pytest.approx(4 * m**k - 4 * (1 - m**k), abs=1e-6)


def test_ring_buffer_contents_and_wrap_around():
    queue = torch.zeros(5, 2)
    ids = torch.full((5,), -1)
    pointer = torch.zeros(1, dtype=torch.long)
    for step in range(4):  # batches of 2: writes slots 0-1, 2-3, 4-0 (wraps), 1-2
        batch = torch.tensor([[step, 0.0], [step, 1.0]])
        ring_buffer_enqueue_([queue, ids], [batch, torch.tensor([10 * step, 10 * step + 1])], pointer)
    assert queue.tolist() == [[2, 1], [3, 0], [3, 1], [1, 1], [2, 0]]
    assert ids.tolist() == [21, 30, 31, 11, 20]
    assert pointer.item() == 3
    # A batch larger than the queue keeps its last rows, each at the slot it would have reached.
    ring_buffer_enqueue_([queue, ids], [torch.arange(14.0).view(7, 2), torch.arange(7)], pointer)
    assert ids.tolist() == [2, 3, 4, 5, 6]
    assert pointer.item() == (3 + 7) % 5
