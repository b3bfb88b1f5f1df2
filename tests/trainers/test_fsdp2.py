"""The shipped accelerate FSDP2 config, actually launched: two CPU processes (gloo) train the tiny dual encoder for a
few steps through `hf-vlp pretrain`, and end where one process ends on the same global batches.

Only the machine-specific keys are overridden on the `accelerate launch` command line (2 processes instead of 8, fp32
instead of bf16); the sharding settings (FSDP version 2, transformer-block wrapping, full state dict) are the file's.
Batches are taken in order (`--train_sampling_strategy sequential`): two ranks of 4 then see the same 8 pairs per step
as one process of 8, and the model gathers contrastive negatives across ranks, so the loss and the update are the same.

Without GPUs accelerate 1.x sets up no FSDP (no `--use_cpu`: `DistributedType.NO`, refused by `hf-vlp`; with it: DDP
over gloo, the FSDP plugin dropped), although torch runs FSDP2 on CPU over gloo. `fsdp2_cpu_worker.py` lifts that one
gate and runs the unchanged CLI, so the Trainer's own FSDP2 path (`fully_shard` of the config's layer classes and the
root, sharded AdamW, full state dict for `save_pretrained`) is what runs here. `fully_shard` refuses 0-d
parameters, so this also checks that hf-vlp's learned scalars are sharded as `[1]` vectors and saved 0-d as before.
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
WORKER = Path(__file__).with_name("fsdp2_cpu_worker.py")
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
    args = _pretrain_args(model_config, tmp_path / "data" / "train", sharded, 4)
    two = _launch([str(WORKER), *args, "--use_cpu"], env, tmp_path)
    assert two.returncode == 0, two.stderr[-4000:]
    setups = re.findall(r"SETUP (\S+) fsdp_version=(\S+) world=(\d+)", two.stdout)
    assert setups == [("DistributedType.FSDP", "2", "2")] * 2, two.stdout[-2000:]

    # the Hub-ready folder holds hf-vlp's model code, not the class FSDP2 derives from it at run time
    config = json.loads((sharded / "model" / "config.json").read_text())
    assert all(not target.startswith("_fsdp") for target in config["auto_map"].values()), config["auto_map"]
    assert not list((sharded / "model").glob("_fsdp*.py"))
    ours = load_file(sharded / "model" / "model.safetensors")
    reference = load_file(single / "model" / "model.safetensors")
    assert ours.keys() == reference.keys()
    # the learned temperature is stored 0-d, as before FSDP2 support and as CLIP / Chinese-CLIP store it
    assert ours["logit_scale"].shape == reference["logit_scale"].shape == torch.Size([])
    for name, value in reference.items():
        # attention key biases get no gradient in exact arithmetic (softmax is shift-invariant): AdamW turns their
        # float32 noise, which differs with the reduction order, into steps of up to the learning rate
        noise_only = name.endswith(("key.bias", "k_proj.bias"))
        atol = STEPS * 1e-3 if noise_only else 1e-4
        torch.testing.assert_close(ours[name], value, rtol=1e-3, atol=atol, msg=name)
    # the logged loss is the mean of the two ranks' losses (4 queries each against all 8 keys): the 8-query mean
    assert len(_losses(sharded)) == len(_losses(single)) == STEPS
    assert _losses(sharded) == pytest.approx(_losses(single), rel=1e-3)
