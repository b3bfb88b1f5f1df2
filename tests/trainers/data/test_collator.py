"""`ImageTextCollator`: processor outputs with the right shapes, plus the side channel the trainer pops."""

from __future__ import annotations

import torch
from PIL import Image

from trainers.data import SIDE_CHANNEL_KEYS, ImageTextCollator, stable_image_hash


def item(image_id: str, text: str, colour=(255, 0, 0), size=(20, 12)) -> dict:
    return {"image": Image.new("RGB", size, colour), "text": text, "image_id": image_id, "extra": "ignored"}


def test_shapes_ids_and_skips(processor):
    items = [
        item("a", "一个红色的圆形"),
        None,
        item("b", "左边是两个蓝色的三角形，右边是一个红色的圆形"),
        item("a", "红色"),
    ]
    batch = ImageTextCollator(processor, max_length=12)(items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (3, 12)
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["attention_mask"][1].all()  # the long caption was truncated to max_length
    assert batch["image_ids"] == ["a", "b", "a"]
    assert batch["image_index"].tolist() == [0, 1, 0]  # two pairs share image "a": both are its positives
    hashes = batch["image_hash"].tolist()
    assert hashes[0] == hashes[2] == stable_image_hash("a") != hashes[1] and min(hashes) >= 0
    assert batch["num_skipped_samples"] == 1
    assert set(SIDE_CHANNEL_KEYS) <= set(batch) and "extra" not in batch


def test_longest_padding_and_image_transform(processor):
    seen = []

    def transform(image):
        seen.append(image.size)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    collator = ImageTextCollator(processor, max_length=32, image_transform=transform, padding="longest")
    batch = collator([item("a", "红色"), item("b", "一个红色的圆形")])
    assert batch["input_ids"].shape == (2, 9)  # [CLS] + 7 characters + [SEP]
    assert seen == [(20, 12), (20, 12)]


def test_streaming_skip_counts_add_up(processor):
    items = [dict(item("a", "红色"), num_skipped=2), dict(item("b", "红色"), num_skipped=0), None]
    assert ImageTextCollator(processor)(items)["num_skipped_samples"] == 3


def test_all_bad_batch_keeps_only_the_side_channel(processor):
    batch = ImageTextCollator(processor)([None, None])
    assert set(batch) == set(SIDE_CHANNEL_KEYS)
    assert batch["num_skipped_samples"] == 2 and batch["image_index"].shape == (0,)
