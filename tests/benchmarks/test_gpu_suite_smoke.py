"""`benchmarks/gpu_suite.sh --smoke`: the GPU suite's code path on CPU with tiny towers (no speed is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_smoke_measures_every_variant(tmp_path):
    output = tmp_path / "gpu_suite.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(REPO_ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke", "--output", str(output)]
    completed = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(output.read_text())
    assert report["config"]["smoke"] is True and report["date"] and report["machine"]["cpu"]
    results = report["results"]
    assert list(results) == [
        "reference",
        "reference+compile",
        "ours",
        "ours+compile",
        "ours+flip",
        "ours+flip+compile",
    ]
    for entry in results.values():
        assert math.isfinite(entry["pairs_per_s"]) and entry["pairs_per_s"] > 0
        assert entry["peak_bytes"] > 0 and entry["ratio_pairs_per_s_vs_reference"] > 0
    # FLIP halves the image tokens: the counted work per pair drops, while ours without it equals the reference's.
    assert results["ours+flip"]["counted_flops_per_pair"] < 0.9 * results["ours"]["counted_flops_per_pair"]
    assert results["ours"]["counted_flops_per_pair"] == pytest.approx(
        results["reference"]["counted_flops_per_pair"], rel=1e-3
    )
    assert "GPU suite" in completed.stdout and "ours+flip+compile" in completed.stdout
