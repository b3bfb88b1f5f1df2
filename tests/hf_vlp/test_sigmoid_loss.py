"""SigLIP's sigmoid loss: its value by hand, its initial parameters, and equality across two processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_vlp.models.contrastive import sigmoid_contrastive_loss
from tests.trainers.helpers import small_model


ROOT = Path(__file__).resolve().parents[2]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_by_hand_one_positive_per_row():
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    # positives on the diagonal (z=+1), negatives off it (z=-1); summed over pairs, divided by the 2 queries
    expected = -(log_sigmoid(1.0) + log_sigmoid(2.0) + log_sigmoid(-0.5) + log_sigmoid(3.0)) / 2
    assert sigmoid_contrastive_loss(logits, logits.t()).item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_loss_by_hand_pairs_sharing_an_image_are_positives_and_offset_selects_the_own_pair():
    logits = torch.tensor([[1.0, -2.0, 0.5]])  # one local query against three gathered keys
    ids, all_ids = torch.tensor([7]), torch.tensor([3, 7, 7])
    expected = -(log_sigmoid(-1.0) + log_sigmoid(-2.0) + log_sigmoid(0.5))
    assert sigmoid_contrastive_loss(logits, logits, 1, ids, all_ids).item() == pytest.approx(expected, rel=1e-6)
    expected_own_pair_only = -(log_sigmoid(-1.0) + log_sigmoid(-2.0) + log_sigmoid(-0.5))
    assert sigmoid_contrastive_loss(logits, logits, offset=1).item() == pytest.approx(expected_own_pair_only, rel=1e-6)


def test_model_sigmoid_loss_equals_the_formula_on_its_embeddings_and_starts_like_siglip(tiny_batch):
    model = small_model(contrastive_loss="sigmoid")
    assert model.logit_bias.item() == pytest.approx(-10.0)
    assert model.logit_scale.item() == pytest.approx(math.log(10.0))
    ids = torch.tensor([0, 1, 0, 2])
    out = model(**tiny_batch, return_loss=True, image_ids=ids)
    logits = math.exp(model.logit_scale.item()) * out.image_embeds @ out.text_embeds.t() + model.logit_bias
    signs = (ids[:, None] == ids[None, :]).float() * 2 - 1
    expected = -F.logsigmoid(signs * logits).sum() / 4
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logits_per_image, logits)  # sigmoid(logits) is the match probability
    out.loss.backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0
    assert small_model().logit_bias is None  # the softmax loss has no bias parameter


def test_sigmoid_loss_is_refused_when_misspelt():
    with pytest.raises(ValueError, match="contrastive_loss='siglip'.*expected one of"):
        small_model(contrastive_loss="siglip")


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(ROOT / "tests" / "hf_vlp" / "sigmoid_ddp_worker.py"), str(tmp_path)]
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    for similarity in ("global", "token_wise"):
        assert result[f"{similarity}_loss_error"] < 1e-5
        assert result[f"{similarity}_grad_error"] < 1e-4
        assert result[f"{similarity}_bias_grad"] != 0.0
