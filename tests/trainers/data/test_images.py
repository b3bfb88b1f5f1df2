"""`decode_image`: every reference type decodes to RGB, every kind of broken image maps to its own reason."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from trainers.data import BadSampleCounter, BadSampleError, TSVImageRef, decode_image

from .conftest import png_bytes


def noise_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((48, 48), 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_every_reference_type_decodes_to_rgb(tmp_path):
    data = png_bytes(3)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    tsv = tmp_path / "images.tsv"
    tsv.write_bytes(b"x\tnot-used\n" + b"a\t" + base64.b64encode(data) + b"\r\n")
    gray = Image.new("L", (8, 8), 7)
    for ref in (
        data,
        bytearray(data),
        str(path),
        path,
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(path)},
        TSVImageRef(str(tsv), 11),
        gray,
    ):
        image = decode_image(ref)
        assert image.mode == "RGB" and image.size == (8, 8)
    assert decode_image(data).getpixel((0, 0)) == (120, 100, 200)


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (b"", "empty_image"),
        (b"definitely not an image", "corrupt_image"),
        (noise_jpeg()[:-200], "corrupt_image"),  # truncated: PIL only notices when the pixels are loaded
        ({"bytes": None, "path": None}, "missing_image"),
        (None, "missing_image"),
    ],
)
def test_bad_images_raise_with_reason(ref, reason):
    with pytest.raises(BadSampleError) as caught:
        decode_image(ref)
    assert caught.value.reason == reason


def test_missing_and_zero_size_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadSampleError, match="missing_image"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(BadSampleError, match="empty_image"):
        decode_image(str(tmp_path / "empty.png"))


def test_bad_base64_in_tsv(tmp_path):
    tsv = tmp_path / "images.tsv"
    tsv.write_bytes(b"a\tabcde\n")  # 5 base64 characters cannot be valid
    with pytest.raises(BadSampleError, match="corrupt_image"):
        decode_image(TSVImageRef(str(tsv), 0))


def test_unknown_reference_type_is_a_programming_error():
    with pytest.raises(TypeError, match="int"):
        decode_image(42)


def test_counter_counts_every_time_but_warns_once(caplog):
    counter = BadSampleCounter()
    with caplog.at_level("WARNING"):
        for _ in range(3):
            counter.record("img-7", "corrupt_image", "broken")
        counter.record("img-8", "empty_caption")
    assert counter.as_dict() == {"corrupt_image": 3, "empty_caption": 1}
    assert counter.total == 4
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "img-7" in messages[0] and "corrupt_image" in messages[0]
