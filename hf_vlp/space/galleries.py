"""The images a Space searches when it serves no index, and the thumbnails it shows of any result.

A `Gallery` is a list of images (PIL images or file paths) with captions and a key that changes with their content,
so embeddings are cached per content. `ThumbnailStore` writes result thumbnails once, atomically, under a
content-addressed name: a file being served is never rewritten by a concurrent request (which used to cut a response
short: "Too little data for declared Content-Length").
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from . import scenes
from .inputs import MAX_IMAGE_BYTES, MAX_UPLOAD_IMAGES, UserInputError, load_image


__all__ = [
    "BUILTIN_GALLERY",
    "DEFAULT_GALLERY_DIR",
    "ENV_GALLERY",
    "MAX_FOLDER_IMAGES",
    "Gallery",
    "ThumbnailStore",
    "builtin_gallery",
    "default_gallery",
    "folder_gallery",
    "upload_gallery",
]

logger = logging.getLogger("hf_vlp.space")

# Where the demo job (`hf-vlp pretrain --recipe demo`) leaves its eval images (an imagefolder: PNGs +
# metadata.jsonl); without them the Space shows its own built-in scenes.
DEFAULT_GALLERY_DIR = "./hf_vlp_demo_output/eval"
ENV_GALLERY = "HF_VLP_GALLERY"
BUILTIN_GALLERY = "builtin"  # `--gallery builtin`: the Space's own scenes even when the demo eval set exists
MAX_FOLDER_IMAGES = 20_000
THUMBNAIL_SIZE = 256
THUMBNAIL_CACHE_SIZE = 4096  # (source key -> file) entries remembered, so a repeated result costs no decoding

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _digest_images(images: Sequence[Any]) -> str:
    """A content key of a gallery: the bytes of its files, or the pixels of in-memory images, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        if isinstance(image, Image.Image):
            digest.update(f"{image.mode}:{image.size}".encode())
            digest.update(image.tobytes())
        else:
            with open(image, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class Gallery:
    """Images to search (PIL images or file paths), their captions, and a key that changes with their content."""

    name: str
    images: tuple[Any, ...]
    captions: tuple[str, ...]
    key: str

    @classmethod
    def create(cls, name: str, images: Sequence[Any], captions: Sequence[str]) -> Gallery:
        return cls(name, tuple(images), tuple(captions), _digest_images(images))

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, position: int) -> str:
        return self.captions[position]

    def thumbnail_key(self, position: int) -> str:
        return f"{self.key}:{position}"

    def load(self, position: int) -> Image.Image:
        """The RGB image at `position`, or `UserInputError` naming it when it cannot be read."""
        return load_image(self.images[position], self.captions[position])


def builtin_gallery(variants: int = 1) -> Gallery:
    """The Space's own scenes (`scenes.py`): 20 coloured shapes per variant, no files needed."""
    items = scenes.demo_gallery(variants=variants)
    return Gallery.create("内置示例图库", [image for image, _ in items], [caption for _, caption in items])


def folder_gallery(folder: str | os.PathLike, name: str | None = None) -> Gallery:
    """A folder of images: an imagefolder with `metadata.jsonl` (`file_name`, `text`) such as the demo job's eval
    split, or else every image file in it (captioned by file name). At most `MAX_FOLDER_IMAGES` are taken."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    paths: list[Path] = []
    captions: list[str] = []
    if metadata.is_file():
        with open(metadata, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                row = json.loads(line)
                text = row.get("text") or row.get("captions") or ""
                paths.append(folder / row["file_name"])
                captions.append(text[0] if isinstance(text, list) else str(text))
    elif folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        captions = [p.name for p in paths]
    if not paths:
        raise FileNotFoundError(f"no images in gallery folder {folder}")
    if len(paths) > MAX_FOLDER_IMAGES:
        logger.warning("Gallery %s has %d images; using the first %d.", folder, len(paths), MAX_FOLDER_IMAGES)
        paths, captions = paths[:MAX_FOLDER_IMAGES], captions[:MAX_FOLDER_IMAGES]
    return Gallery.create(name or folder.name, [str(p) for p in paths], captions)


def default_gallery(gallery: str | os.PathLike | None = None) -> Gallery:
    """The argument, else `HF_VLP_GALLERY`, else the demo job's eval images if present, else the built-in scenes.

    `"builtin"` asks for the built-in scenes explicitly; anything else is an image folder.
    """
    folder = gallery or os.environ.get(ENV_GALLERY) or None
    if folder == BUILTIN_GALLERY:
        return builtin_gallery()
    if folder is not None:
        return folder_gallery(folder)
    if os.path.isfile(os.path.join(DEFAULT_GALLERY_DIR, "metadata.jsonl")):
        return folder_gallery(DEFAULT_GALLERY_DIR, name="示例评测图库")
    return builtin_gallery()


def upload_gallery(paths: Sequence[str]) -> Gallery:
    """A gallery of user uploads (count and file size checked here; contents when they are encoded)."""
    if len(paths) > MAX_UPLOAD_IMAGES:
        raise UserInputError(f"一次最多上传 {MAX_UPLOAD_IMAGES} 张图片，收到 {len(paths)} 个文件。")
    for path in paths:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise UserInputError(
                f"「{Path(path).name}」太大（{os.path.getsize(path) / 2**20:.1f} MB），"
                f"每张图片最多 {MAX_IMAGE_BYTES // 2**20} MB。"
            )
    return Gallery.create("上传的图片", list(paths), [Path(p).name for p in paths])


class ThumbnailStore:
    """Result thumbnails as immutable files: `<blake2b of the encoded bytes>.webp` in `directory`.

    A file is written once, to a temporary name in the same folder and renamed into place (atomic on POSIX and
    Windows), and never rewritten: concurrent requests for the same image get the same finished file. A small
    memo maps a source key (gallery key + position, or an index's stored path) to its file, so a result shown
    before costs neither decoding nor encoding. The web server may serve the files directly from `directory`.
    """

    def __init__(self, directory: str | os.PathLike | None = None, size: int = THUMBNAIL_SIZE):
        self.directory = Path(directory or Path(tempfile.gettempdir()) / "hf-vlp-space-thumbnails")
        self.size = size
        self._memo: dict[str, str] = {}
        self._lock = threading.Lock()

    def path(self, key: str, load: Callable[[], Image.Image]) -> str:
        """The thumbnail file of the image `load()` returns, remembered under `key` (`load` runs on a miss only)."""
        with self._lock:
            cached = self._memo.get(key)
        if cached is not None and os.path.exists(cached):
            return cached
        path = self.write(load())
        with self._lock:
            if len(self._memo) >= THUMBNAIL_CACHE_SIZE:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = path
        return path

    def write(self, image: Image.Image) -> str:
        """Write a display copy no larger than `size` (once per content) and return its path."""
        if max(image.size) > self.size:
            image = image.copy()
            image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=85)
        data = buffer.getvalue()
        target = self.directory / f"{hashlib.blake2b(data, digest_size=16).hexdigest()}.webp"
        if not target.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(dir=self.directory, prefix=".staging-", suffix=".webp")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                os.replace(staging, target)  # same bytes whoever wins a race: the name is their hash
            except BaseException:
                Path(staging).unlink(missing_ok=True)
                raise
        return str(target)
