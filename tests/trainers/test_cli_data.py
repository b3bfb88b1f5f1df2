"""The CLI's data builders on every source format (JSONL, Chinese-CLIP TSV, `datasets`, streaming tar shards), and
streaming training with a corrupt sample counted and skipped."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
from PIL import Image

from tests.trainers.helpers import small_model, training_args
from trainers import VLPTrainer
from trainers.arguments import DataArguments
from trainers.cli import build_eval_sets, build_train_dataset
from trainers.cli.errors import UserError
from trainers.data import ImageTextDataset, StreamingImageTextDataset, demo_records


@pytest.fixture(scope="module")
def records():
    return demo_records(6, image_size=16, seed=2)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_jsonl_eval_file_gives_gallery_and_zero_shot(tmp_path, records):
    lines = []
    for index, record in enumerate(records):
        record["image"].save(tmp_path / f"{index}.png")
        lines.append({"image": f"{index}.png", "text": record["text"][0], "label": record["label"] or ""})
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))
    gallery, zero_shot = build_eval_sets(DataArguments(eval_file=str(tmp_path / "eval.jsonl")))
    assert len(gallery.images) == len(gallery.texts) == 6
    labelled = [record["label"] for record in records if record["label"]]
    assert zero_shot is not None and len(zero_shot.images) == len(labelled)
    assert [zero_shot.class_names[i] for i in zero_shot.labels] == labelled

    train = build_train_dataset(DataArguments(train_file=str(tmp_path / "eval.jsonl"), max_train_samples=4))
    assert isinstance(train, ImageTextDataset) and len(train) == 4 and train[0]["image"].size == (16, 16)


def test_chinese_clip_tsv_and_texts(tmp_path, records):
    with open(tmp_path / "valid_imgs.tsv", "w") as handle:
        for index, record in enumerate(records):
            handle.write(f"{index}\t{base64.b64encode(_png(record['image'])).decode()}\n")
    queries = [{"text_id": 0, "text": "红色", "image_ids": [0, 1]}, {"text_id": 1, "text": "圆形", "image_ids": [2]}]
    (tmp_path / "valid_texts.jsonl").write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in queries))
    gallery, zero_shot = build_eval_sets(DataArguments(eval_file=str(tmp_path / "valid_imgs.tsv")))
    assert gallery.texts == ["红色", "圆形"] and gallery.txt2imgs == [[0, 1], [2]] and zero_shot is None
    with pytest.raises(UserError, match="texts.jsonl"):
        build_eval_sets(DataArguments(eval_file=str(tmp_path / "other_imgs.tsv")))


def test_saved_datasets_dataset_with_class_labels(tmp_path, records):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.ClassLabel(names=["甲", "乙"])}
    )
    data = {
        "image": [record["image"] for record in records],
        "text": [record["text"][0] for record in records],
        "label": [index % 2 for index in range(6)],
    }
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data, features), "test": datasets.Dataset.from_dict(data, features)}
    ).save_to_disk(tmp_path / "ds")
    args = DataArguments(dataset=str(tmp_path / "ds"), eval_split="test")
    gallery, zero_shot = build_eval_sets(args)
    assert len(gallery.images) == 6 and zero_shot.class_names == ["乙", "甲"]
    assert [zero_shot.class_names[i] for i in zero_shot.labels] == ["甲", "乙"] * 3
    assert len(build_train_dataset(args)) == 6


def test_streaming_tar_shards_train_and_count_bad_samples(tmp_path, records, small_processor):
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for index, record in enumerate(records):
                payload = b"not a png" if (shard, index) == (0, 2) else _png(record["image"])
                for name, data in ((f"{index}.png", payload), (f"{index}.txt", record["text"][0].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    dataset = build_train_dataset(DataArguments(train_shards=[str(tmp_path / "shard-*.tar")], shuffle_buffer=0))
    assert isinstance(dataset, StreamingImageTextDataset) and len(dataset.shards) == 2

    args = training_args(tmp_path / "out", max_steps=3, per_device_train_batch_size=4, logging_steps=3)
    trainer = VLPTrainer(model=small_model(), args=args, train_dataset=dataset, processing_class=small_processor)
    trainer.train()
    assert trainer.state.global_step == 3
    assert [log for log in trainer.state.log_history if "loss" in log][-1]["num_skipped_samples"] == 1
