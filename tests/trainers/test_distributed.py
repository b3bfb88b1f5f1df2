"""Two CPU processes (torchrun, gloo): contrastive negatives are gathered from both ranks with gradient, so the
DDP-averaged update equals one process's update on the concatenated batch; the same holds with gradient caching;
the sharded retrieval evaluation equals the single-process one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "trainers" / "ddp_worker.py"),
        str(tmp_path),
    ]
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["max_relative_error_chunk0"] < 1e-4
    assert result["max_relative_error_chunk3"] < 1e-4
    assert result["eval_matches_single_process"]
