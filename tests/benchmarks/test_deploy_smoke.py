"""Smoke runs of the deployment benchmarks (ONNX Runtime vs PyTorch, faiss indexes vs chunked top-k).

Like `test_smoke.py`: each script's `main(["--smoke", "--output", path])` runs in-process and the JSON report must
hold the fields the README rows are built from. No speed is asserted.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.test_smoke import _run


def test_onnx_smoke(tmp_path):
    pytest.importorskip("onnxruntime")
    report = _run("bench_onnx", tmp_path)
    for key in ("image_batch1", "text_batch1", "image_batch4", "text_batch4"):
        row = report["speed"]["results"][key]
        assert row["max_abs_diff"] < 1e-4  # the graphs compute what PyTorch computes
        assert row["onnxruntime"]["ratio_to_reference"] > 0


def test_index_smoke(tmp_path):
    pytest.importorskip("faiss")
    rows = _run("bench_index", tmp_path)["sizes"]["5000"]
    assert rows["flat"]["equal_to_chunked_topk"]
    assert set(rows) == {"chunked_topk", "flat", "ivfpq", "hnsw"}
    assert all(0 <= row["recall@10"] <= 1 for row in rows.values())
    assert rows["ivfpq"]["bytes_per_vector"] < rows["flat"]["bytes_per_vector"]
