"""The shipped accelerate FSDP2 config, actually launched: two CPU processes (gloo) train the tiny dual encoder for a
few steps through `hf-vlp pretrain`, and end where one process ends on the same global batches.

Only the machine-specific keys are overridden on the `accelerate launch` command line (2 processes instead of 8, fp32
instead of bf16; without a GPU the processes run on the CPU over gloo — `--cpu` would make accelerate start one); the sharding settings (FSDP version 2, transformer-block wrapping, full state dict) are the
file's. Batches are taken in order (`--train_sampling_strategy sequential`): two ranks of 4 then see the same 8 pairs
per step as one process of 8, and the model gathers contrastive negatives across ranks, so the loss and the update are
the same. A probe launched with the same config first asks accelerate what it set up; where that is not FSDP over two
processes (on a GPU-less machine accelerate 1.x reports `DistributedType.NO` with one process per rank: the ranks
would train unsharded on duplicated batches), the test skips with what accelerate reported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "trainers" / "recipes" / "accelerate_fsdp.yaml"
STEPS = 3


def _pretrain_args(model_config: Path, train_dir: Path, output_dir: Path, batch: int) -> list[str]:
    return [
        "pretrain",
        "--model-config",
        str(model_config),
        "--train-dir",
        str(train_dir),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        str(batch),
        "--max_steps",
        str(STEPS),
        "--train_sampling_strategy",
        "sequential",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "constant",
        "--max_grad_norm",
        "0",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
        "--seed",
        "0",
        "--disable_tqdm",
        "true",
    ]


def _losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


PROBE = """
from accelerate import PartialState
state = PartialState()
print(f"STATE {state.distributed_type} {state.num_processes}", flush=True)
"""


def _launch(script_args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIG),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        *script_args,
    ]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process(tmp_path):
    from tests.trainers.helpers import small_config
    from trainers.data import generate_demo_dataset

    generate_demo_dataset(tmp_path / "data", num_train=8 * STEPS, num_eval=1, image_size=32)
    model_config = tmp_path / "config.json"
    small_config().to_json_file(model_config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    state = _launch([str(probe)], env, tmp_path)
    states = sorted(set(re.findall(r"STATE (\S+) (\d+)", state.stdout)))  # the two ranks' lines may interleave
    if state.returncode != 0 or states != [("DistributedType.FSDP", "2")]:
        error = (state.stderr.strip().splitlines() or ["no error output"])[-1] if state.returncode else ""
        pytest.skip(
            f"accelerate cannot run the FSDP2 config here (torch {torch.__version__}): {states} {error}".strip()
        )

    single = tmp_path / "single"
    one = subprocess.run(
        [sys.executable, "-m", "trainers.cli", *_pretrain_args(model_config, tmp_path / "data" / "train", single, 8)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-4000:]

    sharded = tmp_path / "fsdp2"
    two = _launch(
        ["-m", "trainers.cli", *_pretrain_args(model_config, tmp_path / "data" / "train", sharded, 4)], env, tmp_path
    )
    assert two.returncode == 0, two.stderr[-4000:]

    ours = load_file(sharded / "model" / "model.safetensors")
    reference = load_file(single / "model" / "model.safetensors")
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The logged loss is rank 0's: its 4 queries against all 8 keys, which differs from the mean over 8 queries by
    # the spread between the two halves of the batch, not by the sharding.
    assert len(_losses(sharded)) == len(_losses(single)) == STEPS
    assert _losses(sharded) == pytest.approx(_losses(single), rel=1e-3)
