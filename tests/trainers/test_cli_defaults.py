"""Defaults users should not have to know: the text length fits the text tower, images decode in workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.trainers.helpers import small_config
from trainers import cli
from trainers.cli.building import DEFAULT_MAX_LENGTH, _text_length, text_positions
from trainers.cli.parsing import default_num_workers


def test_default_text_length_is_capped_at_the_towers_positions():
    short = small_config()
    short.text_config.max_position_embeddings = 32
    assert text_positions(short) == 32
    assert _text_length(short, None, None) == 32  # not Chinese-CLIP's 52, which would crash at step 0
    assert _text_length(small_config(), None, None) == DEFAULT_MAX_LENGTH
    assert _text_length(short, 16, 52) == 16
    roberta = SimpleNamespace(
        text_config=SimpleNamespace(model_type="roberta", max_position_embeddings=514, pad_token_id=1)
    )
    assert text_positions(roberta) == 512
    with pytest.raises(SystemExit, match="--max-length 32 or less"):
        _text_length(short, 64, None)


def test_dataloader_workers_default_from_the_cpu_count(tmp_path):
    _, _, training_args, _ = cli.parse_job_args(["--output_dir", str(tmp_path)], "hf-vlp test", "test")
    assert training_args.dataloader_num_workers == default_num_workers() >= 1
    _, _, training_args, _ = cli.parse_job_args(
        ["--output_dir", str(tmp_path), "--dataloader_num_workers", "0"], "hf-vlp test", "test"
    )
    assert training_args.dataloader_num_workers == 0


def test_too_long_max_length_is_refused_in_one_line(tmp_path):
    config = small_config().to_dict()
    config["text_config"]["max_position_embeddings"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "trainers.cli", "pretrain", "--model-config", str(tmp_path / "config.json")]
        + ["--max-length", "64", "--train-dir", str(tmp_path), "--output_dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "--max-length 64 is longer than the text tower's 32 positions" in result.stderr
