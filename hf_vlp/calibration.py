"""Match-probability calibration: a temperature and a bias fitted on held-out image-text pairs (Platt scaling).

Users of contrastive models ask "does this caption match this image?" and get cosines around 0.3-0.5 that no
threshold separates across models. Logistic regression of the match label on the model's pair score
(`model.match_score`: cosine for dual encoders, ITM log-odds for fusion encoders) turns the score into a
probability that is right as often as it says; `expected_calibration_error` measures how far from that a set of
probabilities is. Everything here is deterministic: Newton's method in float64, seeded negative sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


__all__ = [
    "calibration_pairs",
    "expected_calibration_error",
    "fit_temperature_and_bias",
    "reliability_table",
]


def fit_temperature_and_bias(
    scores: torch.Tensor, labels: torch.Tensor, max_iter: int = 100, l2: float = 1e-4
) -> tuple[float, float]:
    """`(scale, bias)` minimising the logistic loss of `sigmoid(scale * score + bias)` against 0/1 `labels`.

    Newton's method on the two parameters in float64 from (0, 0): the loss is convex, so it converges in a few
    steps to the same answer on every machine. A small L2 penalty keeps the scale finite when the held-out pairs
    are perfectly separable (a perfect score would otherwise push it to infinity).
    """
    x = scores.detach().double().flatten()
    y = labels.detach().double().flatten()
    if x.numel() != y.numel() or x.numel() == 0:
        raise ValueError(f"need as many labels as scores (got {x.numel()} scores, {y.numel()} labels)")
    if y.min() == y.max():
        raise ValueError("calibration needs both matching and non-matching pairs")
    features = torch.stack([x, torch.ones_like(x)], dim=1)
    params = torch.zeros(2, dtype=torch.float64)
    penalty = torch.diag(torch.tensor([l2, 0.0], dtype=torch.float64)) * x.numel()
    for _ in range(max_iter):
        p = torch.sigmoid(features @ params)
        gradient = features.t() @ (p - y) + penalty @ params
        hessian = features.t() @ (features * (p * (1 - p)).unsqueeze(1)) + penalty
        step = torch.linalg.solve(hessian + 1e-12 * torch.eye(2, dtype=torch.float64), gradient)
        params -= step
        if step.abs().max() < 1e-10:
            break
    return float(params[0]), float(params[1])


def reliability_table(probabilities: torch.Tensor, labels: torch.Tensor, num_bins: int = 10) -> list[dict]:
    """Per equal-width probability bin: `count`, mean predicted probability `confidence`, observed match rate
    `accuracy` (empty bins are left out)."""
    p = probabilities.detach().double().flatten().clamp(0, 1)
    y = labels.detach().double().flatten()
    bins = (p * num_bins).long().clamp(max=num_bins - 1)
    rows = []
    for index in range(num_bins):
        members = bins == index
        if members.any():
            rows.append(
                {
                    "bin": f"[{index / num_bins:.1f}, {(index + 1) / num_bins:.1f})",
                    "count": int(members.sum()),
                    "confidence": float(p[members].mean()),
                    "accuracy": float(y[members].mean()),
                }
            )
    return rows


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, num_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed match rate over the bins."""
    rows = reliability_table(probabilities, labels, num_bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in rows) / total


def calibration_pairs(
    similarity: torch.Tensor, img2txt: Sequence[Sequence[int]], negatives_per_image: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(image_index, text_index, label)` of held-out pairs: every (image, caption) positive, and per image
    `negatives_per_image` non-matching texts, half the most similar ones (the confusable negatives a threshold
    must reject) and half drawn at random (seeded).

    `similarity` is the (images, texts) score matrix used to find the hard negatives.
    """
    generator = torch.Generator().manual_seed(seed)
    images, texts, labels = [], [], []
    num_texts = similarity.shape[1]
    for image, positives in enumerate(img2txt):
        for text in positives:
            images.append(image)
            texts.append(text)
            labels.append(1)
        allowed = torch.ones(num_texts, dtype=torch.bool)
        allowed[list(positives)] = False
        candidates = allowed.nonzero().flatten()
        if candidates.numel() == 0:
            continue
        num_hard = min(negatives_per_image // 2 + negatives_per_image % 2, candidates.numel())
        order = similarity[image, candidates].float().argsort(descending=True, stable=True)
        hard = candidates[order[:num_hard]]
        rest = candidates[order[num_hard:]]
        num_random = min(negatives_per_image - num_hard, rest.numel())
        random = rest[torch.randperm(rest.numel(), generator=generator)[:num_random]]
        for text in torch.cat([hard, random]).tolist():
            images.append(image)
            texts.append(text)
            labels.append(0)
    return torch.tensor(images), torch.tensor(texts), torch.tensor(labels)
