"""`--help` for humans: hf-vlp's own flags first, grouped and with dashes; TrainingArguments behind `--help-all`."""

from __future__ import annotations

import pytest

from trainers.cli import parse_job_args
from trainers.cli.finetune import FinetuneArguments


def _help(capsys, flag: str = "--help") -> str:
    with pytest.raises(SystemExit) as exited:
        parse_job_args([flag], "hf-vlp finetune", "Fine-tune.", extra=(FinetuneArguments,))
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_hf_vlp_flags_by_group_before_the_training_arguments(capsys):
    text = _help(capsys)
    headings = ["recipe and job:", "model:", "data:", "trainer (hf-vlp):", "transformers.TrainingArguments:"]
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert "--train-dir TRAIN_DIR, --train_dir TRAIN_DIR" in text  # dashes first, as in the README
    assert "--grad-cache-chunk-size" in text and "--lora-r" in text
    assert "--learning_rate" not in text.split("transformers.TrainingArguments:")[1].split("--help-all")[1]
    assert "--per_device_train_batch_size PER_DEVICE" not in text  # listed only by --help-all
    assert len(text.splitlines()) < 300  # ~800 lines when every TrainingArguments flag is listed


def test_help_all_lists_every_training_argument(capsys):
    text = _help(capsys, "--help-all")
    assert "--per_device_train_batch_size PER_DEVICE_TRAIN_BATCH_SIZE" in text
    assert "--learning_rate LEARNING_RATE" in text


def test_help_texts_do_not_repeat_or_contradict(capsys):
    text = " ".join(_help(capsys).split())
    assert "(default: None)" not in text
    assert "--no-lora-train-heads, --no_lora_train_heads Turn off --lora-train-heads." in text
    assert "default 0.05)." in text and "default 0.05). (default" not in text
