"""Smoke runs of every benchmark script, and checks of the measurement helpers they share.

The smoke runs call each script's `main(["--smoke", "--output", path])` in-process (the scripts start their own
peak-memory subprocesses) and check that the JSON report has the fields the README table is built from. Nothing
here asserts a speed: the machines running CI are shared and timings vary.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(module_name: str, tmp_path: Path) -> dict:
    import importlib

    module = importlib.import_module(f"benchmarks.{module_name}")
    output = tmp_path / f"{module_name}.json"
    returned = module.main(["--smoke", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report == json.loads(json.dumps(returned)), "main() must return what it wrote"
    assert report["date"] and report["machine"]["cpu"]
    return report


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_train_step_smoke(tmp_path):
    report = _run("bench_train_step", tmp_path)
    assert report["config"]["smoke"] is True
    assert report["max_logit_diff"] < 1e-3
    for variant in ("reference", "ours"):
        entry = report[variant]
        assert _finite_positive(entry["median"])
        assert _finite_positive(entry["peak_bytes"])
        assert _finite_positive(entry["flops_per_step"])
    assert _finite_positive(report["ratio_pairs_per_s"])
    assert _finite_positive(report["ratio_peak_memory"])
    fusion = report["fusion"]
    assert _finite_positive(fusion["ratio_fusion_over_dual"])
    assert _finite_positive(fusion["memory_ratio_fusion_over_dual"])


@pytest.mark.slow
def test_grad_cache_smoke(tmp_path):
    report = _run("bench_grad_cache", tmp_path)
    assert report["max_grad_diff"] < 1e-3
    assert [row["batch"] for row in report["results"]] == report["config"]["batches"]
    for row in report["results"]:
        for field in ("reference_pairs_per_s", "ours_pairs_per_s", "ratio_pairs_per_s", "ratio_peak_memory"):
            assert _finite_positive(row[field]), field
        assert row["reference_oom"] is None and row["ours_oom"] is None


@pytest.mark.slow
def test_retrieval_smoke(tmp_path):
    report = _run("bench_retrieval", tmp_path)
    for kind in ("images", "texts"):
        assert _finite_positive(report["encoding"][f"reference_{kind}"]["median"])
        assert _finite_positive(report["encoding"][f"ours_{kind}"]["ratio_to_reference"])
    rows = report["latency"]
    assert [row["k"] for row in rows] == [*report["config"]["ks"], report["config"]["gallery"]]
    assert rows[-1]["scores_all_gallery"] is True
    assert all(_finite_positive(row["ratio_fusion_over_dual_latency"]) for row in rows)


@pytest.mark.slow
def test_streaming_smoke(tmp_path):
    report = _run("bench_streaming", tmp_path)
    scaling = report["scaling"]
    assert [row["pairs"] for row in scaling] == report["config"]["sizes"]
    for row in scaling:
        assert row["pairs_read"] == row["pairs"], "an epoch must read every pair exactly once"
        assert _finite_positive(row["ratio_to_linear"]) and _finite_positive(row["first_batch_s"])
    assert set(report["linear_fit"]) == {"slope_s_per_pair", "intercept_s", "r2"}
    fed = report["bottleneck"]["fed"]["train_fed_streaming"]
    assert _finite_positive(fed["ratio_to_reference"]) and 0 <= fed["data_wait_fraction"] <= 1
    assert _finite_positive(report["bottleneck"]["loaders_alone"]["streaming"]["ratio_to_train"])


@pytest.mark.slow
def test_search_smoke(tmp_path):
    report = _run("bench_search", tmp_path)
    assert all(row["indices_equal"] for row in report["results"])


# ---------------------------------------------------------------------------------------------------- helpers


def test_patch_dropout_breakdown_smoke(tmp_path):
    report = _run("bench_patch_dropout", tmp_path)
    parts = ("step", "vision", "text", "optimizer")
    assert set(report["ratio_dropout_over_full"]) == set(parts)
    assert all(_finite_positive(report["seconds"][f"{part}@{rate}"]) for part in parts for rate in (0.0, 0.5))
    flop_ratios = report["flop_ratio_dropout_over_full"]
    assert flop_ratios["text"] == 1.0  # patch dropout leaves the text tower's work alone
    assert flop_ratios["vision"] < flop_ratios["step"] < 1.0  # ... and the step keeps the text tower's share


def test_interleaved_rates_alternates_order_and_pairs_rounds():
    from benchmarks.common import interleaved_rates

    calls = []

    def variant(name: str, work: float):
        def run() -> float:
            calls.append(name)
            return work

        return run

    summary = interleaved_rates({"a": variant("a", 1.0), "b": variant("b", 2.0)}, rounds=4, reference="a")
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(summary["b"]["ratio_to_reference_per_round"]) == 4
    assert all(_finite_positive(rate) for rate in summary["a"]["rates"])
    assert "ratio_to_reference" not in summary["a"]


def test_linear_fit_recovers_a_line():
    from benchmarks.bench_streaming import linear_fit

    rows = [{"pairs": n, "epoch_s": 0.5 + 0.002 * n} for n in (1000, 2000, 4000, 8000)]
    fit = linear_fit(rows)
    assert fit["slope_s_per_pair"] == pytest.approx(0.002)
    assert fit["intercept_s"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)


def test_peak_memory_sees_a_transient_allocation(tmp_path):
    """A 64 MiB tensor allocated and freed after `start()` shows as ~64 MiB of peak, in a fresh process."""
    from benchmarks.memory import run_worker

    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(REPO_ROOT)!r})
            import torch
            from benchmarks.memory import PeakMemory

            torch.ones(8).sum()  # load torch's code paths first
            memory = PeakMemory("cpu")
            memory.start()
            block = torch.ones(16 * 2**20)  # 64 MiB, written so its pages are resident
            del block
            print(json.dumps({{"peak": memory.peak_bytes(), "method": memory.method}}))
            """
        )
    )
    result = run_worker(script, {})
    assert 56 * 2**20 <= result["peak"] <= 80 * 2**20, result
    assert sys.platform != "linux" or result["method"].startswith("VmHWM")


def test_tensor_peak_counts_new_storages_not_views_of_existing_ones():
    import torch

    from benchmarks.memory import TensorPeak

    weight = torch.ones(256, 256)  # 256 KiB that exists before the block, like a parameter
    with TensorPeak() as tracker:
        view = weight.t()  # a view: no allocation
        first = view * 2  # 256 KiB, freed below
        del first
        second = weight + 1  # 256 KiB, reuses the freed bytes: the peak stays at one buffer
        second.add_(1)  # in place: no allocation
    assert tracker.peak == 256 * 256 * 4
    del view, second
