"""The `hf-vlp` command line: subcommand registry, recipes under command-line flags, and the main job end to end
(`hf-vlp pretrain --recipe demo` then `hf-vlp evaluate` on the saved model reproduces its metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import cli
from trainers.cli.errors import UserError


ROOT = Path(__file__).resolve().parents[2]


def test_registry_dispatches_and_lists_subcommands(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", cli.Subcommand("echo", lambda argv: calls.append(argv) or 3, "Echo."))
    cli.register_subcommand("lazy", "json:dumps", "Imported only when run.")
    try:
        assert cli.main(["echo", "--x", "1"]) == 3 and calls == [["--x", "1"]]
        assert cli.main(["--help"]) == 0
        listing = capsys.readouterr().out
        assert all(name in listing for name in ("pretrain", "evaluate", "echo", "lazy"))
        assert cli.main(["no-such-command"]) == 2
    finally:
        cli.SUBCOMMANDS.pop("lazy")


def test_recipe_values_are_defaults_that_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "preset: tiny\nlearning_rate: 5.0e-4\nmax_steps: 7\nconfig_overrides: {lock_vision: true}\n"
        "grad_cache_chunk_size: 4\noutput_dir: from_recipe\n",
        encoding="utf-8",
    )
    model_args, data_args, training_args, job_args = cli.parse_job_args(
        ["--recipe", str(recipe), "--max-steps", "3", "--output_dir", str(tmp_path / "out"), "--train-dir", "x"],
        "hf-vlp test",
        "test",
    )
    assert model_args.preset == "tiny" and json.loads(model_args.config_overrides) == {"lock_vision": True}
    assert training_args.learning_rate == 5e-4 and training_args.grad_cache_chunk_size == 4
    assert training_args.max_steps == 3 and training_args.output_dir == str(tmp_path / "out")
    assert data_args.train_dir == "x" and job_args.recipe == str(recipe)

    recipe.write_text("preset: tiny\nlearning_rat: 1.0\n", encoding="utf-8")
    with pytest.raises(UserError, match="learning_rat"):
        cli.parse_job_args(["--recipe", str(recipe)], "hf-vlp test", "test")
    with pytest.raises(UserError, match="demo"):
        cli.parse_job_args(["--recipe", "no-such-recipe"], "hf-vlp test", "test")


@pytest.mark.parametrize(
    "recipe", sorted(p.stem for p in cli.RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("accelerate_"))
)
def test_every_builtin_recipe_parses(recipe):
    # bf16 recipes are for GPUs; this machine checks the values parse
    model_args, _, training_args, _ = cli.parse_job_args(["--recipe", recipe, "--bf16", "false"], "hf-vlp", "")
    budget = training_args.max_steps > 0 or "num_train_epochs" in cli.load_recipe(recipe)  # steps or epochs
    assert budget and (model_args.preset or model_args.text_model)


def test_builtin_demo_recipe_parses():
    model_args, data_args, training_args, job_args = cli.parse_job_args(["--recipe", "demo"], "hf-vlp", "")
    assert model_args.preset == "tiny" and data_args.demo and training_args.max_steps > 0
    assert training_args.output_dir == "./hf_vlp_demo_output" and "tensorboard" in training_args.report_to


def _hf_vlp(*args: str, env: dict) -> subprocess.CompletedProcess:
    entry = shutil.which("hf-vlp")
    command = [entry] if entry else [sys.executable, "-m", "trainers.cli"]
    completed = subprocess.run([*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.mark.slow
def test_demo_pretrain_then_evaluate_reproduces_the_metrics(tmp_path):
    env = {**os.environ, "HF_VLP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    small = ["--demo_num_train", "64", "--demo_num_eval", "16", "--per_device_eval_batch_size", "8"]
    out = tmp_path / "run"
    _hf_vlp(
        "pretrain", "--recipe", "demo", "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2",
        "--per_device_train_batch_size", "16", "--logging_steps", "2", *small, env=env,
    )  # fmt: skip
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_i2t_R@1", "eval_t2i_R@10", "eval_mean_recall", "eval_zero_shot_top1"} <= results.keys()
    assert json.loads((out / "all_results.json").read_text())["eval_mean_recall"] == results["eval_mean_recall"]
    assert (out / "checkpoint-4").is_dir() and any((out / "runs").iterdir())  # resumable; TensorBoard logs

    model_dir = out / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert all((model_dir / f"{ref.split('.')[0]}.py").is_file() for ref in config["auto_map"].values())
    from transformers import AutoModel, AutoProcessor

    assert type(AutoModel.from_pretrained(model_dir)).__name__ == "DualEncoderModel"
    assert AutoProcessor.from_pretrained(model_dir)(text=["一个红色的圆形"])["input_ids"].shape[0] == 1

    evaluated = tmp_path / "evaluate"
    _hf_vlp("evaluate", "--recipe", "demo", "--model", str(model_dir), "--output_dir", str(evaluated), *small, env=env)
    again = json.loads((evaluated / "eval_results.json").read_text())
    metric_keys = [key for key in results if "R@" in key or "mean" in key or "zero_shot" in key or "num_" in key]
    assert {key: again[key] for key in metric_keys} == {key: results[key] for key in metric_keys}
