"""Every switch of the papers' recipe is reachable from `hf-vlp pretrain` (what the real-data ablation runs): the
`real_data_best` recipe plus FLIP, the sigmoid loss and FILIP through `--config-overrides`, end to end."""

from __future__ import annotations

import json

from transformers import AutoConfig

from trainers import cli


def test_recipe_with_every_config_switch_trains_saves_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_VLP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    overrides = {"vision_patch_dropout": 0.5, "contrastive_loss": "sigmoid", "similarity": "token_wise"}
    code = cli.main(
        [
            "pretrain", "--recipe", "real_data_best", "--preset", "tiny", "--config-overrides", json.dumps(overrides),
            "--demo", "--demo_num_train", "16", "--demo_num_eval", "8", "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--use_cpu", "true",
            "--torch_threads", "1", "--dataloader_num_workers", "0", "--eval_strategy", "no",
        ]
    )  # fmt: skip
    assert code == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    config = AutoConfig.from_pretrained(out / "model")
    assert {key: getattr(config, key) for key in overrides} == overrides
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_images"] == 8 and 0.0 <= results["eval_mean_recall"] <= 100.0
