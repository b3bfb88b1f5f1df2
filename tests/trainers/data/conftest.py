"""Shared fixtures: tiny image-text samples with one corrupt image and one empty caption in the middle, writers for
every on-disk format, and an offline Chinese-CLIP processor."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from transformers import BertTokenizer, ChineseCLIPImageProcessorPil, ChineseCLIPProcessor


# Sample 2 has a corrupt image and sample 4 an all-whitespace caption; the others are good.
CORRUPT_INDEX, EMPTY_CAPTION_INDEX = 2, 4
GOOD_IDS = ["s0", "s1", "s3", "s5"]


def png_bytes(index: int, size: int = 8) -> bytes:
    """A small PNG whose colour encodes `index`, so a decoded image can be traced back to its sample."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (index * 40 % 256, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_samples(count: int = 6, prefix: str = "s") -> list[dict]:
    """`count` samples {"id", "bytes", "text"}; the corrupt and empty-caption ones sit at fixed inner positions."""
    samples = []
    for index in range(count):
        data = png_bytes(index)
        text = f"第{index}张图片"
        if prefix == "s" and index == CORRUPT_INDEX:
            data = b"\x89PNG\r\n\x1a\n this is not a picture"
        if prefix == "s" and index == EMPTY_CAPTION_INDEX:
            text = "   "
        samples.append({"id": f"{prefix}{index}", "bytes": data, "text": text})
    return samples


def write_image_files(folder: Path, samples: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        (folder / f"{sample['id']}.png").write_bytes(sample["bytes"])


def write_jsonl(path: Path, samples: list[dict], image_key: str = "image") -> Path:
    """Images next to a JSONL of relative paths; the file is the shard."""
    write_image_files(path.parent / "images", samples)
    lines = [
        json.dumps({image_key: f"images/{s['id']}.png", "text": s["text"], "id": s["id"]}, ensure_ascii=False)
        for s in samples
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A webdataset shard: key.png + key.txt per sample (every other sample's caption in key.json instead)."""
    with tarfile.open(path, "w") as tar:
        for index, sample in enumerate(samples):
            caption = sample["text"].encode("utf-8")
            text_member = (f"{sample['id']}.txt", caption)
            if index % 2:
                text_member = (f"{sample['id']}.json", json.dumps({"text": sample["text"]}).encode("utf-8"))
            for name, data in ((f"{sample['id']}.png", sample["bytes"]), text_member):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_parquet(path: Path, samples: list[dict], text_column: str = "text", id_column: str = "id") -> Path:
    """Images embedded as `datasets`-style {"bytes", "path"} structs, two rows per row group."""
    table = pa.table(
        {
            "image": pa.array([{"bytes": s["bytes"], "path": None} for s in samples]),
            text_column: [s["text"] for s in samples],
            id_column: [s["id"] for s in samples],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    return path


def write_chinese_clip(folder: Path, samples: list[dict]) -> tuple[Path, Path]:
    """`images.tsv` (id, base64) and `texts.jsonl` where text 100 describes two images and s1 has two texts."""
    folder.mkdir(parents=True, exist_ok=True)
    tsv = folder / "valid_imgs.tsv"
    tsv.write_text("".join(f"{s['id']}\t{base64.b64encode(s['bytes']).decode()}\n" for s in samples), encoding="utf-8")
    texts = [{"text_id": 100 + i, "text": s["text"], "image_ids": [s["id"]]} for i, s in enumerate(samples)]
    texts[0]["image_ids"].append("s1")
    texts.append({"text_id": 200, "text": "另一段描述", "image_ids": ["s1"]})
    jsonl = folder / "valid_texts.jsonl"
    jsonl.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return tsv, jsonl


@pytest.fixture
def samples() -> list[dict]:
    return make_samples()


@pytest.fixture(scope="session")
def processor() -> ChineseCLIPProcessor:
    """A real ChineseCLIPProcessor built offline: BERT vocab from a dict, PIL-backed image processor (no torchvision)."""
    characters = sorted(set("".join(f"第{i}张图片" for i in range(10)) + "一个红色的圆形左边右边是两蓝三角，"))
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters])}
    image_processor = ChineseCLIPImageProcessorPil(
        size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16}
    )
    return ChineseCLIPProcessor(image_processor=image_processor, tokenizer=BertTokenizer(vocab=vocab))
