"""Several launched processes that the Trainer would not train as one job are refused in one line naming the fix.

On a machine without GPUs, `torchrun` and `accelerate launch` (the shipped DDP and FSDP configs) start the processes,
but accelerate sets up distributed training for them only with `--use_cpu` (then DDP over gloo); otherwise each rank
would train the whole model on the same batches while the contrastive loss gathers the other ranks' duplicates as
negatives. The two processes here get the environment those launchers give their workers (RANK, WORLD_SIZE,
MASTER_ADDR/PORT; `ACCELERATE_USE_FSDP` as `accelerate launch` exports it for an FSDP config), so each rank's own
output can be checked: exit status 2, one line, no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainers.cli.errors import RUNTIME, USAGE, UserError


ROOT = Path(__file__).resolve().parents[2]


def _launch_two(argv: list[str], extra_env: dict[str, str], cwd: Path) -> list[tuple[int, str]]:
    """Run `hf-vlp ARGV` as the two workers of one launch; (exit status, stderr) per rank."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workers = []
    for rank in range(2):
        env = {
            **os.environ,
            **extra_env,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        env.pop("HF_VLP_DEBUG", None)
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "trainers.cli", *argv],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        results.append((worker.returncode, stderr))
    return results


@pytest.mark.slow
def test_two_processes_without_distributed_training_are_refused(tmp_path):
    missing = tmp_path / "missing"
    for status, stderr in _launch_two(["pretrain", "--preset", "tiny", "--train-dir", str(missing)], {}, tmp_path):
        lines = stderr.strip().splitlines()
        assert status == USAGE, stderr
        assert "Traceback" not in stderr
        assert len(lines) == 1, stderr
        assert lines[0].startswith("hf-vlp pretrain: 2 processes were launched but none is set up for distributed")
        assert "(no GPU found and no --use_cpu)" in lines[0] and "add --use_cpu" in lines[0]


@pytest.mark.slow
def test_use_cpu_sets_up_ddp_and_passes_the_check(tmp_path):
    """With the fix the check passes (accelerate: DDP over gloo), so the next mistake is the one reported."""
    missing = tmp_path / "missing"
    argv = ["pretrain", "--preset", "tiny", "--train-dir", str(missing), "--use_cpu"]
    for status, stderr in _launch_two(argv, {}, tmp_path):
        lines = stderr.strip().splitlines()
        assert status == RUNTIME, stderr
        assert lines == [f"hf-vlp pretrain: --train-dir {missing}: the folder does not exist"]


@pytest.mark.parametrize("fsdp_from", ["accelerate", "flag"])
def test_fsdp_request_names_why(monkeypatch, fsdp_from):
    """An FSDP launch (accelerate's exported variable or the Trainer's --fsdp) is told that accelerate shards on GPUs
    only; the devices are stubbed as accelerate sets them up without a GPU (`parallel_mode` not distributed)."""
    from transformers.training_args import ParallelMode

    from trainers.cli.checks import check_distributed_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    if fsdp_from == "accelerate":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    args = SimpleNamespace(parallel_mode=ParallelMode.NOT_PARALLEL, fsdp="full_shard" if fsdp_from == "flag" else "")
    with pytest.raises(UserError, match=r"\(accelerate sets up FSDP on GPUs only\)") as refused:
        check_distributed_launch(args)
    assert refused.value.exit_code == USAGE
    check_distributed_launch(SimpleNamespace(parallel_mode=ParallelMode.DISTRIBUTED, fsdp=""))  # set up: passes
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_distributed_launch(args)  # one process: nothing to refuse
