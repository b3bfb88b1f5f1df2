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


def test_longest_padding_changes_no_model_output(small_processor):
    """The training default pads to the batch's longest caption; masked padding must not move any score, neither a
    dual encoder's (mean pooling over the mask) nor a fusion encoder's (cross-attention over the text mask)."""
    from hf_vlp import FusionEncoderConfig, FusionEncoderForRetrieval
    from tests.trainers.helpers import small_model

    items = [item("a", "红色"), item("b", "一个红色的圆形"), item("c", "左边是两个蓝色的三角形")]
    batches = {
        padding: ImageTextCollator(small_processor, max_length=32, padding=padding)(items)
        for padding in ("longest", "max_length")
    }
    assert batches["longest"]["input_ids"].shape[1] < batches["max_length"]["input_ids"].shape[1] == 32
    inputs = {
        padding: {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
        for padding, batch in batches.items()
    }

    dual = small_model().eval()
    torch.manual_seed(0)
    vision = {**FusionEncoderConfig.from_preset("tiny-fusion").vision_config.to_dict(), "image_size": 32}
    fusion = FusionEncoderForRetrieval(FusionEncoderConfig.from_preset("tiny-fusion", vision_config=vision)).eval()
    with torch.no_grad():
        logits = {padding: dual(**batch).logits_per_image for padding, batch in inputs.items()}
        scores = {}
        for padding, batch in inputs.items():
            image = fusion.encode_image(batch["pixel_values"])
            text = fusion.encode_text(batch["input_ids"], batch["attention_mask"])
            scores[padding] = fusion.match_score(image, text)
    torch.testing.assert_close(logits["longest"], logits["max_length"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores["longest"], scores["max_length"], rtol=1e-5, atol=1e-5)
