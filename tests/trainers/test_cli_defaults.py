"""Defaults users should not have to know: the text length fits the text tower, images decode in workers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_vlp import DEFAULT_MAX_LENGTH
from tests.trainers.helpers import small_config
from trainers import cli
from trainers.cli.errors import UserError, check_max_length
from trainers.cli.parsing import default_num_workers
from trainers.cli.text_length import default_text_length, text_positions


def test_default_text_length_is_capped_at_the_towers_positions():
    short = small_config()
    short.text_config.max_position_embeddings = 32
    assert text_positions(short) == 32
    assert default_text_length(short, None) == 32  # not Chinese-CLIP's 52, which would crash at step 0
    assert default_text_length(small_config(), None) == DEFAULT_MAX_LENGTH
    assert default_text_length(short, 24) == 24
    roberta = SimpleNamespace(
        text_config=SimpleNamespace(model_type="roberta", max_position_embeddings=514, pad_token_id=1)
    )
    assert text_positions(roberta) == 512
    with pytest.raises(UserError, match="--max-length 32 or less"):
        check_max_length(short, 64)


def test_dataloader_workers_default_from_the_cpu_count_and_persist(tmp_path):
    _, _, training_args, _ = cli.parse_job_args(["--output_dir", str(tmp_path)], "hf-vlp test", "test")
    assert training_args.dataloader_num_workers == default_num_workers() >= 1
    assert training_args.dataloader_persistent_workers
    _, _, training_args, _ = cli.parse_job_args(
        ["--output_dir", str(tmp_path), "--dataloader_num_workers", "0"], "hf-vlp test", "test"
    )
    assert training_args.dataloader_num_workers == 0
    assert not training_args.dataloader_persistent_workers  # a DataLoader without workers refuses to persist them


def test_memory_is_pinned_only_for_an_accelerator(tmp_path, monkeypatch):
    """Without an accelerator pinning buys nothing and the DataLoader warns about it on every run."""
    import torch

    from trainers import VLPTrainingArguments

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert not VLPTrainingArguments(output_dir=str(tmp_path)).dataloader_pin_memory
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert VLPTrainingArguments(output_dir=str(tmp_path)).dataloader_pin_memory
    assert not VLPTrainingArguments(output_dir=str(tmp_path), use_cpu=True).dataloader_pin_memory
