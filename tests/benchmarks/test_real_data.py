"""The real-data benchmark set builds deterministically, and a fresh model trained with the trainer's defaults leaves
the ln(batch) loss plateau on it within a fixed budget."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from benchmarks.real_data import CATEGORY_NAMES_ZH, build_real_data, parse_stamp_text


pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="the set is fetched with apt-get download")


def test_parse_stamp_text_reads_locales():
    text = "A frog.\nzh_CN.utf8=青蛙。\nzh_TW.utf8=青蛙\nfr.utf8=\nbad line\n"
    assert parse_stamp_text(text) == {"en": "A frog.", "zh_CN.utf8": "青蛙。", "zh_TW.utf8": "青蛙"}


@pytest.fixture(scope="module")
def real_data():
    return build_real_data()


@pytest.mark.slow
def test_split_is_by_category_folder_and_complete(real_data):
    def rows(folder):
        return [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]

    train, evaluation = rows(real_data.train_dir), rows(real_data.eval_dir)
    assert len(train) == real_data.stats["train_images"] > 400
    assert len(evaluation) == real_data.stats["eval_images"] > 100
    # near-duplicates (one category folder) never straddle the split
    assert not {r["category"] for r in train} & {r["category"] for r in evaluation}
    for row in evaluation[:20]:
        assert (real_data.eval_dir / row["file_name"]).is_file()
        assert row["text"] == row["captions"][0] and row["label"] in CATEGORY_NAMES_ZH.values()


@pytest.mark.slow
def test_fresh_model_leaves_the_loss_plateau_on_real_data(real_data, tmp_path):
    """A fresh model with the trainer's default schedule and weight-decay groups, 48 steps of batch 32: the loss
    must fall well below ln(32) = 3.47 (a model that learns nothing stays there)."""
    from hf_vlp import DualEncoderConfig, DualEncoderModel, VLPImageProcessor, VLPProcessor, build_chinese_tokenizer
    from trainers import VLPTrainer, VLPTrainingArguments
    from trainers.data import ImageTextDataset, read_image_folder

    text = {"model_type": "bert", "vocab_size": 7581, "hidden_size": 64, "num_hidden_layers": 2}
    text.update(num_attention_heads=4, intermediate_size=256, max_position_embeddings=32)
    vision = {"model_type": "clip_vision_model", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    vision.update(intermediate_size=256, image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = DualEncoderModel(DualEncoderConfig(text_config=text, vision_config=vision, projection_dim=64))
    processor = VLPProcessor(
        VLPImageProcessor(size={"height": 32, "width": 32}), build_chinese_tokenizer(), max_length=16
    )
    batch = 32
    args = VLPTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=48,
        per_device_train_batch_size=batch,
        learning_rate=5e-4,
        weight_decay=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = VLPTrainer(
        model=model,
        args=args,
        train_dataset=ImageTextDataset(list(read_image_folder(real_data.train_dir))),
        processing_class=processor,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[0] == pytest.approx(math.log(batch), abs=0.3)
    assert sum(losses[-8:]) / 8 < 0.8 * math.log(batch)
