"""Match-probability calibration: the logistic fit, ECE, held-out pairs, `match_probability` on both families,
and `hf-vlp calibrate` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hf_vlp import DualEncoderModel, FusionEncoderForRetrieval
from hf_vlp.calibration import (
    calibration_pairs,
    expected_calibration_error,
    fit_temperature_and_bias,
    reliability_table,
)
from tests.hf_vlp.test_fusion_model import batch, model_for
from tests.trainers.helpers import small_model


def test_fit_recovers_the_generating_temperature_and_bias_deterministically():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(20000, generator=generator)
    labels = (torch.rand(20000, generator=generator) < torch.sigmoid(3.0 * scores - 1.0)).long()
    scale, bias = fit_temperature_and_bias(scores, labels)
    assert scale == pytest.approx(3.0, abs=0.15) and bias == pytest.approx(-1.0, abs=0.1)
    assert fit_temperature_and_bias(scores, labels) == (scale, bias)


def test_separable_pairs_give_a_finite_fit_and_one_class_is_refused():
    scale, _ = fit_temperature_and_bias(torch.tensor([0.1, 0.2, 0.6, 0.7]), torch.tensor([0, 0, 1, 1]))
    assert 0 < scale < 1e4
    with pytest.raises(ValueError, match="both matching and non-matching"):
        fit_temperature_and_bias(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_ece_is_the_weighted_gap_per_bin():
    probabilities = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.15, 0.15])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    rows = reliability_table(probabilities, labels)
    assert [(row["count"], row["accuracy"]) for row in rows] == [(2, 0.0), (4, 0.75)]
    assert expected_calibration_error(probabilities, labels) == pytest.approx((2 * 0.15 + 4 * 0.2) / 6)


def test_pairs_hold_every_positive_and_hard_plus_random_negatives():
    similarity = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.3, 0.0], [0.1, 0.9, 0.2, 0.7, 0.0, 0.6]])
    image, text, label = calibration_pairs(similarity, [[0], [1, 3]], negatives_per_image=2, seed=0)
    pairs = set(zip(image.tolist(), text.tolist(), label.tolist()))
    assert {(0, 0, 1), (1, 1, 1), (1, 3, 1)} <= pairs
    assert (0, 2, 0) in pairs and (1, 5, 0) in pairs  # the most similar non-matching text of each image
    assert int((label == 0).sum()) == 4 and not any(t in ([0], [1, 3])[i] for i, t, y in pairs if y == 0)
    again = calibration_pairs(similarity, [[0], [1, 3]], negatives_per_image=2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((image, text, label), again))


def test_dual_encoder_match_probability_needs_calibration_then_applies_it(tmp_path, small_processor):
    model = small_model(seed=3).eval()
    images = [Image.new("RGB", (32, 32), (200, 20, 20))]
    inputs = small_processor(text=["红色的圆形", "蓝色的方块", "绿色的树"], images=images)
    assert not model.has_match_probability
    with pytest.raises(ValueError, match="hf-vlp calibrate"):
        model.match_probability(**inputs)
    model.config.match_calibration = {"scale": 12.0, "bias": -3.0}
    assert model.has_match_probability
    probabilities = model.match_probability(**inputs)
    with torch.no_grad():
        cosine = model(**inputs).logits_per_image[0] / model.get_logit_scale()
    torch.testing.assert_close(probabilities, torch.sigmoid(12.0 * cosine - 3.0))
    model.save_pretrained(tmp_path)
    reloaded = DualEncoderModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.match_probability(**inputs), probabilities)


def test_fusion_match_probability_is_its_itm_probability_until_calibrated():
    model = model_for(cls=FusionEncoderForRetrieval, seed=2).eval()
    inputs = batch(size=3)
    assert model.has_match_probability
    with torch.no_grad():
        itm = model.itm_score(**inputs)
    torch.testing.assert_close(model.match_probability(**inputs), torch.sigmoid(itm))
    model.config.match_calibration = {"scale": 0.5, "bias": 1.0}
    torch.testing.assert_close(model.match_probability(**inputs), torch.sigmoid(0.5 * itm + 1.0))


def test_calibrate_command_stores_the_fit_and_reports_ece(tmp_path, small_processor, capsys):
    from trainers.cli import main
    from trainers.data import demo_records

    model_dir, data = tmp_path / "model", tmp_path / "eval"
    small_model(seed=6).save_pretrained(model_dir)
    small_processor.save_pretrained(model_dir)
    data.mkdir()
    lines = []
    for index, record in enumerate(demo_records(16, image_size=32, seed=5)):
        record["image"].save(data / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "text": record["text"][0]}, ensure_ascii=False))
    (data / "metadata.jsonl").write_text("\n".join(lines), encoding="utf-8")

    assert main(["calibrate", str(model_dir), "--eval_dir", str(data), "--negatives-per-image", "2"]) == 0
    assert "expected calibration error" in capsys.readouterr().out
    report = json.loads((model_dir / "calibration.json").read_text())
    assert report["num_fit_pairs"] == 24 and report["num_held_out_pairs"] == 24
    assert 0 <= report["ece_after"] <= 1 and report["reliability_after"]
    reloaded = DualEncoderModel.from_pretrained(model_dir).eval()
    assert reloaded.config.match_calibration["scale"] == pytest.approx(report["scale"])
    inputs = small_processor(text=["一个红色的圆形"], images=[Image.new("RGB", (32, 32), (200, 20, 20))])
    assert 0 < float(reloaded.match_probability(**inputs)) < 1
