"""What an index is built from: the records of image folders, tar shards, JSONL/CSV/parquet lists, `datasets`.

Every source yields the `trainers.data` readers' record shape (`{"image", "text", "image_id"}`) in a deterministic
order, which the build relies on twice: a resumed build cuts the same chunks, and the processes of a multi-process
build split the same rows.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.data import BadSampleCounter, DataFormatError, read_hf_dataset, read_image_folder, read_shard


__all__ = ["DEMO_SOURCES", "IMAGE_EXTENSIONS", "IndexSource", "captions_of", "image_path"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEMO_SOURCES = ("demo:eval", "demo:train")


@dataclass(frozen=True)
class IndexSource:
    """The data source of an index.

    `images` entries may be a folder (a `datasets` imagefolder with `metadata.jsonl`/`.csv`, or any folder of image
    files), tar shards, JSONL/CSV/parquet lists, glob patterns of those, or `demo:eval` / `demo:train` (the built-in
    demo set `hf-vlp pretrain --recipe demo` trains on); `dataset` a `datasets` Hub id or a `save_to_disk` folder.
    """

    images: Sequence[str] = ()
    dataset: str | None = None
    split: str = "train"
    image_column: str = "image"
    text_column: str = "text"
    id_column: str | None = None

    def records(self, counter: BadSampleCounter | None = None) -> Iterator[dict]:
        """Records (`{"image", "text", "image_id"}`) of the source, in a deterministic order.

        Raises:
            DataFormatError: a source does not exist or has an unknown type.
        """
        if not self.images and self.dataset is None:
            raise DataFormatError("give --images (folders, tar shards, JSONL/CSV/parquet lists) or --dataset")
        columns = {"text_column": self.text_column, "id_column": self.id_column}
        for entry in self.images:
            if entry in DEMO_SOURCES:
                entry = str(_demo_split(entry.partition(":")[2]))
            paths = sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry]
            if not paths:
                raise DataFormatError(f"no file matches {entry}")
            for path in paths:
                if os.path.isdir(path):
                    has_metadata = any(
                        os.path.isfile(os.path.join(path, m)) for m in ("metadata.jsonl", "metadata.csv")
                    )
                    if has_metadata:
                        yield from read_image_folder(path, counter=counter, **columns)
                    else:
                        yield from _plain_image_folder(Path(path))
                elif os.path.exists(path):
                    yield from read_shard(path, image_column=self.image_column, counter=counter, **columns)
                else:
                    raise DataFormatError(f"image source not found: {path}")
        if self.dataset is not None:
            yield from read_hf_dataset(self.dataset, split=self.split, image_column=self.image_column, **columns)

    def settings(self) -> dict[str, Any]:
        """The source as a build records it (local paths made absolute), to refuse resuming with another one."""
        return {
            "images": [os.path.abspath(p) if os.path.exists(p) and p not in DEMO_SOURCES else p for p in self.images],
            "dataset": self.dataset,
            "split": self.split if self.dataset else None,
            "columns": [self.image_column, self.text_column, self.id_column],
        }


def _plain_image_folder(folder: Path) -> Iterator[dict]:
    """Every image file under `folder` (sorted, recursive): a product-photo folder with no captions."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    for path in files:
        yield {"image": str(path.resolve()), "text": None, "image_id": str(path.relative_to(folder))}


def _demo_split(split: str) -> Path:
    """The built-in demo set's `split` folder (rendered on first use, in the same cache as `hf-vlp pretrain`'s)."""
    from trainers.arguments import DataArguments
    from trainers.cli.sources import demo_data_dir

    return demo_data_dir(DataArguments()) / split


def image_path(ref: Any) -> str | None:
    """The file an image reference names, when there is one on disk (thumbnails and re-ranking re-read it)."""
    if isinstance(ref, str | os.PathLike):
        return os.path.abspath(ref)
    if isinstance(ref, dict) and ref.get("bytes") is None and ref.get("path") and os.path.isfile(ref["path"]):
        return os.path.abspath(ref["path"])
    return None


def captions_of(text: Any) -> list[str]:
    """The non-blank captions of a record's `text` (one string or a list)."""
    if isinstance(text, str):
        return [text] if text.strip() else []
    if isinstance(text, list | tuple):
        return [str(t) for t in text if isinstance(t, str) and t.strip()]
    return []
