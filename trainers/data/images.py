"""Lazy image references and the one function that turns them into RGB pixels.

Readers never decode: they hand out cheap references (a path, raw bytes, a `datasets` `{"bytes", "path"}` dict, a
row in a base64 TSV) so that reading metadata stays fast and decoding happens in the DataLoader workers.
`decode_image` is the single place where a reference becomes a `PIL.Image`, and the single place that classifies
what can go wrong with an image into a `BadSampleError` reason.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .bad_samples import BadSampleError


__all__ = ["ImageRef", "TSVImageRef", "decode_image"]


@dataclass(frozen=True)
class TSVImageRef:
    """One image in a Chinese-CLIP style `image_id<TAB>base64` TSV, addressed by the byte offset of its line.

    Holding an offset instead of the base64 payload keeps a multi-gigabyte TSV out of memory (and out of every
    DataLoader worker's pickled copy of the dataset).
    """

    path: str
    offset: int

    def read_bytes(self) -> bytes:
        """Seek to the line, split off the id and base64-decode the payload."""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            line = handle.readline()
        _, _, payload = line.rstrip(b"\r\n").partition(b"\t")
        # Chinese-CLIP writes standard base64 and reads with the URL-safe decoder; the URL-safe decoder accepts both.
        return base64.urlsafe_b64decode(payload)


ImageRef = str | os.PathLike | bytes | bytearray | memoryview | dict | TSVImageRef | Image.Image


def _ref_bytes(ref: Any) -> bytes:
    """Fetch the encoded bytes behind a reference, mapping 'not there' to `missing_image`."""
    if isinstance(ref, bytes | bytearray | memoryview):
        return bytes(ref)
    if isinstance(ref, dict):
        # `datasets.Image(decode=False)` rows: bytes win when both are set (embedded images carry a stale path).
        if ref.get("bytes") is not None:
            return bytes(ref["bytes"])
        if ref.get("path"):
            return _ref_bytes(ref["path"])
        raise BadSampleError("missing_image", "image dict has neither 'bytes' nor 'path'")
    if isinstance(ref, TSVImageRef):
        try:
            return ref.read_bytes()
        except (binascii.Error, ValueError) as error:
            raise BadSampleError(
                "corrupt_image", f"invalid base64 in {ref.path} at byte {ref.offset}: {error}"
            ) from None
    if isinstance(ref, str | os.PathLike):
        try:
            with open(ref, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise BadSampleError("missing_image", f"no such file: {os.fspath(ref)}") from None
        except IsADirectoryError:
            raise BadSampleError("missing_image", f"is a directory, not an image: {os.fspath(ref)}") from None
    if ref is None:
        raise BadSampleError("missing_image", "no image in this record")
    raise TypeError(f"Unsupported image reference of type {type(ref).__name__}")


def decode_image(ref: ImageRef) -> Image.Image:
    """Decode any supported reference into a fully loaded RGB `PIL.Image`.

    The image is loaded completely here (not lazily by PIL later) so that a truncated file fails inside the
    dataset's `__getitem__`, where it is counted and skipped, rather than inside the image processor.

    Raises:
        BadSampleError: `missing_image`, `empty_image` or `corrupt_image`.
        TypeError: the reference is of a type no reader produces (a programming error, not bad data).
    """
    if isinstance(ref, Image.Image):
        return ref if ref.mode == "RGB" else ref.convert("RGB")
    data = _ref_bytes(ref)
    if not data:
        raise BadSampleError("empty_image", "zero-byte image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL reports broken files as UnidentifiedImageError/OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError, depending on the codec.
        raise BadSampleError("corrupt_image", f"{type(error).__name__}: {error}") from None
