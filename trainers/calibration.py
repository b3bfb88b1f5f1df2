"""Fit a model's match probability on held-out image-text pairs (`hf-vlp calibrate`).

The gallery's images and texts are encoded once (sharded like evaluation), pairs are drawn with
`hf_vlp.calibration.calibration_pairs` (every positive, hard and random negatives), and the images are split in
two by index parity: even images fit the temperature and bias, odd ones measure the expected calibration error
before and after, so the reported improvement is on pairs the fit never saw. The fit is stored in
`model.config.match_calibration`, which `model.match_probability` reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hf_vlp.calibration import (
    calibration_pairs,
    expected_calibration_error,
    fit_temperature_and_bias,
    reliability_table,
)
from hf_vlp.models.retrieval_core import select_embeddings
from trainers.data import EvalGallery

from .evaluation import EvalRuntime, encode_images, encode_texts, eval_mode


__all__ = ["calibrate_match_probability", "uncalibrated_probability"]


def uncalibrated_probability(model: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """What users read as a probability before calibration: the ITM probability of a fusion encoder, the cosine
    (clipped to [0, 1]) of a dual encoder."""
    if getattr(model, "match_score_is_log_odds", False):
        return torch.sigmoid(scores)
    return scores.clamp(0, 1)


@torch.no_grad()
def _pair_scores(model: nn.Module, images, texts, image_index, text_index, batch_size: int) -> torch.Tensor:
    scores = []
    for start in range(0, image_index.numel(), batch_size):
        rows = slice(start, start + batch_size)
        image, text = select_embeddings(images, image_index[rows]), select_embeddings(texts, text_index[rows])
        scores.append(model.match_score(image, text).float().cpu())
    return torch.cat(scores)


def calibrate_match_probability(
    model: nn.Module,
    gallery: EvalGallery,
    processor: Any,
    runtime: EvalRuntime,
    negatives_per_image: int = 4,
    seed: int = 0,
    num_bins: int = 10,
) -> dict[str, Any]:
    """Fit `config.match_calibration = {"scale", "bias", ...}` on `gallery` and return the report: the fit,
    pair counts, ECE and reliability tables before and after on the held-out half."""
    if len(gallery.images) < 2:
        raise ValueError("calibration needs at least 2 evaluation images (one half fits, the other measures)")
    with eval_mode(model):
        images, _ = encode_images(model, gallery.images, processor, runtime)
        texts = encode_texts(model, gallery.texts, processor, runtime)
        with torch.no_grad():
            similarity = model.similarity(images, texts)[0].float().cpu()
        image_index, text_index, labels = calibration_pairs(similarity, gallery.img2txt, negatives_per_image, seed)
        scores = _pair_scores(model, images, texts, image_index, text_index, runtime.batch_size)
    fit, held_out = image_index % 2 == 0, image_index % 2 == 1
    scale, bias = fit_temperature_and_bias(scores[fit], labels[fit])
    before = uncalibrated_probability(model, scores[held_out])
    after = torch.sigmoid(scale * scores[held_out] + bias)
    model.config.match_calibration = {
        "scale": scale,
        "bias": bias,
        "score": "itm_log_odds" if getattr(model, "match_score_is_log_odds", False) else "similarity",
        "num_pairs": int(fit.sum()),
    }
    return {
        "scale": scale,
        "bias": bias,
        "num_fit_pairs": int(fit.sum()),
        "num_held_out_pairs": int(held_out.sum()),
        "ece_before": expected_calibration_error(before, labels[held_out], num_bins),
        "ece_after": expected_calibration_error(after, labels[held_out], num_bins),
        "reliability_before": reliability_table(before, labels[held_out], num_bins),
        "reliability_after": reliability_table(after, labels[held_out], num_bins),
    }
