"""Processor, image checks and the offline Chinese tokenizer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hf_vlp import InvalidImageError, VLPImageProcessor, VLPProcessor, build_chinese_tokenizer, sanitize_image
from hf_vlp.models.presets import TINY_VOCAB_SIZE
from hf_vlp.tokenization import chinese_vocabulary


def test_tokenizer_is_deterministic_chinese_bert():
    tokenizer = build_chinese_tokenizer()
    assert len(tokenizer) == TINY_VOCAB_SIZE == len(chinese_vocabulary())
    assert chinese_vocabulary() == chinese_vocabulary()
    tokens = tokenizer.tokenize("左边是一个红色的圆形，右边有2个Blue三角形")
    assert tokens[:4] == ["左", "边", "是", "一"]
    assert "，" in tokens and "[UNK]" not in tokens
    assert tokenizer.convert_tokens_to_ids("[PAD]") == tokenizer.pad_token_id == 0


def test_overlong_text_is_truncated(tiny_processor):
    batch = tiny_processor(text=["红" * 500, "蓝色"])
    assert batch["input_ids"].shape == (2, tiny_processor.max_length)
    assert batch["attention_mask"][1].sum() == 4


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "expected_pixel"),
    [
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.new("RGBA", (4, 4), (0, 0, 255, 0)), (255, 255, 255)),  # transparent -> white, not black
        (Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
        (Image.new("L", (4, 4), 128), (128, 128, 128)),
        (Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),  # 16-bit scaled, not clipped
        (Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), (128, 128, 128)),
        (np.zeros((3, 5, 5), dtype=np.float32), (0, 0, 0)),  # CHW float in [0, 1]
        (np.full((4, 4, 3), 1.0, dtype=np.float32), (255, 255, 255)),
    ],
)
def test_images_are_converted_to_8bit_rgb(image, expected_pixel):
    rgb = sanitize_image(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == expected_pixel


def test_palette_with_transparency_and_encoded_bytes(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert sanitize_image(palette).getpixel((1, 1)) == (255, 255, 255)
    path = tmp_path / "red.png"
    Image.new("RGB", (5, 3), (255, 0, 0)).save(path)
    assert sanitize_image(str(path)).size == (5, 3)
    assert sanitize_image(_png_bytes(Image.new("RGB", (2, 2)))).size == (2, 2)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Image.new("RGB", (0, 0)), "zero size"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "zero size"),
        (np.zeros((2, 2, 2, 2), dtype=np.uint8), "shape"),
        (np.full((2, 2), np.nan, dtype=np.float32), "NaN"),
        (b"not an image at all", "cannot decode"),
        ("/nonexistent/picture.jpg", "not found"),
        (42, "got int"),
        ({"path": "x.jpg"}, "got dict"),
    ],
)
def test_bad_images_raise_named_errors(bad, message):
    with pytest.raises(InvalidImageError, match=message) as info:
        sanitize_image(bad, index=3)
    assert info.value.index == 3
    assert str(info.value).startswith("image 3:")


def test_truncated_file_is_refused(tmp_path):
    data = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="truncated.png"):
        sanitize_image(str(path))


def test_processor_batches_mixed_inputs_and_names_the_bad_one(tiny_processor):
    images = [Image.new("RGB", (80, 50)), np.zeros((10, 10), dtype=np.uint8), Image.new("RGBA", (30, 30))]
    batch = tiny_processor(text=["一", "二", "三"], images=images)
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    with pytest.raises(InvalidImageError, match="image 1"):
        tiny_processor(images=[Image.new("RGB", (8, 8)), "not/a/file.png"])
    with pytest.raises(ValueError, match="needs"):
        tiny_processor()


def test_processor_round_trip(tmp_path, tiny_processor):
    tiny_processor.save_pretrained(tmp_path)
    reloaded = VLPProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.image_processor, VLPImageProcessor)
    assert reloaded.max_length == tiny_processor.max_length
    text = ["左边是一个红色的圆形"]
    assert reloaded(text=text)["input_ids"].tolist() == tiny_processor(text=text)["input_ids"].tolist()


def test_images_already_at_the_target_size_are_not_resampled(tiny_processor):
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import SizeDict

    processor = tiny_processor.image_processor
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    size = SizeDict(height=64, width=64)
    assert processor.resize(array, size, resample=processor.resample) is array  # the shortcut
    # ...which is exactly what resampling to the same size gives
    assert np.array_equal(PilBackend.resize(processor, array, size, resample=processor.resample), array)
    assert processor.resize(array, SizeDict(height=32, width=32), resample=processor.resample).shape == (3, 32, 32)
