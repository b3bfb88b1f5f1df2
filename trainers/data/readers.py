"""Readers for every supported image-text source, all yielding the same lazy record shape (streaming shards:
`trainers.data.shards`).

A record is `{"image": <lazy ref>, "text": str | list[str], "image_id": str}` (readers may add keys, e.g.
`text_ids`). The image stays a reference (path, bytes, `{"bytes", "path"}` dict, `TSVImageRef`) and is decoded by
`decode_image` in the DataLoader workers, so reading metadata is cheap and a bad image only costs its own sample.

Readers raise `DataFormatError` for configuration mistakes (missing metadata file, unknown column) and count
unparseable rows as `bad_record` in the optional `BadSampleCounter` instead of stopping.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .bad_samples import BadSampleCounter, DataFormatError, MissingColumnError
from .images import TSVImageRef


__all__ = [
    "CAPTION_FILE_SUFFIXES",
    "HFDatasetRecords",
    "read_caption_file",
    "read_chinese_clip",
    "read_hf_dataset",
    "read_image_folder",
    "read_parquet",
]

CAPTION_FILE_SUFFIXES = (".jsonl", ".csv")


def _is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def open_binary(path: str | os.PathLike) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Open a local path or an fsspec URL (`hf://`, `s3://`, `https://` ...) as a binary stream.

    URLs go through fsspec (a dependency of `datasets`) so that a tar shard on the Hub is read as a stream rather than
    downloaded first.
    """
    if _is_url(path):
        import fsspec

        return fsspec.open(os.fspath(path), "rb")
    return open(path, "rb")


def require_file(path: str | os.PathLike, what: str) -> None:
    """Raise a `DataFormatError` naming `what` when a local `path` is not a file (URLs are checked on opening)."""
    if not _is_url(path) and not os.path.isfile(path):
        raise DataFormatError(f"{what} not found: {os.fspath(path)}")


def _require_columns(available: Sequence[str], required: Mapping[str, str | None], source: str) -> None:
    """Raise a `DataFormatError` naming the first missing column, the argument that asked for it, and the source."""
    for argument, column in required.items():
        if column is not None and column not in available:
            raise MissingColumnError(column, argument, source, available)


def _parse_caption_list(value: Any) -> list[str] | None:
    """A `captions` cell: a list in JSONL, a JSON-encoded list in CSV. None when absent or unparseable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, list) and value:
        return [str(caption) for caption in value]
    return None


def _iter_table_rows(handle: IO[str], suffix: str, source: str, counter: BadSampleCounter) -> Iterator[dict]:
    """Rows of a JSONL or CSV stream as dicts; malformed JSONL lines are counted as `bad_record` and skipped."""
    if suffix == ".csv":
        yield from csv.DictReader(handle)
        return
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            counter.record(f"{source}:{line_number}", "bad_record", f"invalid JSON: {error}")
            continue
        if not isinstance(row, dict):
            counter.record(f"{source}:{line_number}", "bad_record", "line is not a JSON object")
            continue
        yield row


def read_caption_file(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    text_column: str = "text",
    captions_column: str | None = None,
    id_column: str | None = None,
    extra_columns: Sequence[str] = (),
    counter: BadSampleCounter | None = None,
) -> Iterator[dict]:
    """Records from a JSONL or CSV file of image paths and captions.

    Image paths are resolved relative to the file's folder, so a dataset folder can be moved as a whole. When
    `captions_column` is given and a row has a non-empty list there (a JSON list in CSV), the record's `text` is
    that list (several captions per image); otherwise it is the `text_column` value. `image_id` is the
    `id_column` value, or the image path as written in the file. `extra_columns` are copied into each record
    as they are (e.g. the demo's zero-shot `label`).

    Raises:
        DataFormatError: the file is missing, has an unsupported suffix, or lacks a requested column (checked on
            the CSV header or the first JSON row, before any record is yielded).
    """
    source = os.fspath(path)
    suffix = Path(source.split("?")[0]).suffix.lower()
    if suffix not in CAPTION_FILE_SUFFIXES:
        raise DataFormatError(f"Caption file must end in .jsonl or .csv: {source}")
    require_file(path, "Caption file")
    return _iter_caption_file(
        source, suffix, image_column, text_column, captions_column, id_column, tuple(extra_columns), counter
    )


def _iter_caption_file(
    source: str,
    suffix: str,
    image_column: str,
    text_column: str,
    captions_column: str | None,
    id_column: str | None,
    extra_columns: tuple[str, ...],
    counter: BadSampleCounter | None,
) -> Iterator[dict]:
    counter = counter if counter is not None else BadSampleCounter()
    base_dir = posixpath.dirname(source) if _is_url(source) else os.path.dirname(os.path.abspath(source))
    required = {"image_column": image_column, "text_column": text_column, "id_column": id_column}
    required.update({f"extra_columns[{index}]": column for index, column in enumerate(extra_columns)})
    with open_binary(source) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
        for row_number, row in enumerate(_iter_table_rows(handle, suffix, source, counter)):
            if row_number == 0:
                _require_columns(list(row), required, source)
            image_value = row.get(image_column)
            captions = _parse_caption_list(row.get(captions_column)) if captions_column else None
            image_id = row.get(id_column) if id_column else image_value
            record = {
                "image": os.path.join(base_dir, str(image_value)) if image_value else None,
                "text": captions if captions is not None else row.get(text_column),
                "image_id": str(image_id) if image_id not in (None, "") else f"{source}:row{row_number}",
            }
            record.update({column: row.get(column) for column in extra_columns})
            yield record


def read_image_folder(
    folder: str | os.PathLike,
    *,
    text_column: str = "text",
    captions_column: str | None = "captions",
    id_column: str | None = None,
    extra_columns: Sequence[str] = (),
    counter: BadSampleCounter | None = None,
) -> Iterator[dict]:
    """Records from a `datasets` imagefolder: `folder/metadata.jsonl` (or `metadata.csv`) with a `file_name` column.

    This is the layout `generate_demo_dataset` writes and `load_dataset("imagefolder", data_dir=...)` reads, so the
    same folder works with both. An optional `captions` list column gives several captions per image.

    Raises:
        DataFormatError: the folder has neither metadata file, or the metadata lacks a requested column.
    """
    for name in ("metadata.jsonl", "metadata.csv"):
        metadata = os.path.join(folder, name)
        if os.path.isfile(metadata):
            return read_caption_file(
                metadata,
                image_column="file_name",
                text_column=text_column,
                captions_column=captions_column,
                id_column=id_column,
                extra_columns=extra_columns,
                counter=counter,
            )
    raise DataFormatError(f"No metadata.jsonl or metadata.csv in image folder {os.fspath(folder)}")


class HFDatasetRecords(Sequence):
    """A `datasets.Dataset` seen as a sequence of lazy records, without copying it.

    Rows are fetched on demand from the Arrow table (memory-mapped when loaded from disk), and the image column is
    cast to `Image(decode=False)` so a row carries `{"bytes", "path"}` rather than a decoded picture.
    """

    def __init__(self, dataset: Any, image_column: str, text_column: str, id_column: str | None) -> None:
        columns = [column for column in (image_column, text_column, id_column) if column is not None]
        self.dataset = dataset.select_columns(list(dict.fromkeys(columns)))
        self.image_column = image_column
        self.text_column = text_column
        self.id_column = id_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict]:
        return (self[index] for index in range(len(self)))

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        return {
            "image": row[self.image_column],
            "text": row[self.text_column],
            "image_id": str(row[self.id_column]) if self.id_column else str(index),
        }


def read_hf_dataset(
    source: Any,
    *,
    split: str = "train",
    image_column: str = "image",
    text_column: str = "text",
    id_column: str | None = None,
    **load_kwargs: Any,
) -> HFDatasetRecords:
    """Records from a `datasets` Dataset with an Image (or path/bytes) column.

    `source` may be a `Dataset`, a `DatasetDict` (`split` picks one), a folder written by `save_to_disk`, or
    anything `datasets.load_dataset` accepts (a Hub id, or a builder name such as `"imagefolder"` with
    `data_dir=`), with `load_kwargs` passed through. Use `id_column` when several rows share an image, so the
    collator can tell that they are the same picture.

    Raises:
        DataFormatError: the split or a requested column does not exist, or the dataset is a streaming one.
    """
    import datasets

    if isinstance(source, str | os.PathLike):
        saved = os.path.isdir(source) and any(
            os.path.isfile(os.path.join(source, marker)) for marker in ("state.json", "dataset_dict.json")
        )
        source = (
            datasets.load_from_disk(source) if saved else datasets.load_dataset(source, split=split, **load_kwargs)
        )
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise DataFormatError(f"Split {split!r} not in dataset; available splits: {sorted(source)}")
        source = source[split]
    if not isinstance(source, datasets.Dataset):
        raise DataFormatError(
            f"read_hf_dataset needs a map-style datasets.Dataset, got {type(source).__name__}; for streaming, pass "
            "the dataset's parquet or tar shard files (local paths or hf:// URLs) to StreamingImageTextDataset"
        )
    _require_columns(
        source.column_names,
        {"image_column": image_column, "text_column": text_column, "id_column": id_column},
        f"dataset {source.info.dataset_name or source}",
    )
    if isinstance(source.features[image_column], datasets.Image):
        source = source.cast_column(image_column, datasets.Image(decode=False))
    return HFDatasetRecords(source, image_column, text_column, id_column)


def read_parquet(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    text_column: str = "text",
    id_column: str | None = None,
    batch_size: int = 256,
) -> Iterator[dict]:
    """Records from a parquet file with an image column (binary, `{"bytes", "path"}` struct, or path string).

    Rows are read batch by batch (`iter_batches`), so a large file is never loaded whole. Path strings are resolved
    relative to the parquet file. `image_id` is the `id_column` value or `<file name>:<row number>`.

    Raises:
        DataFormatError: the file is missing or lacks a requested column.
    """
    require_file(path, "Parquet file")
    return _iter_parquet(os.fspath(path), image_column, text_column, id_column, batch_size)


def _iter_parquet(
    source: str, image_column: str, text_column: str, id_column: str | None, batch_size: int
) -> Iterator[dict]:
    import pyarrow.parquet as pq

    base_dir = posixpath.dirname(source) if _is_url(source) else os.path.dirname(os.path.abspath(source))
    name = posixpath.basename(source.split("?")[0])
    with open_binary(source) as handle:
        parquet = pq.ParquetFile(handle)
        required = {"image_column": image_column, "text_column": text_column, "id_column": id_column}
        _require_columns(parquet.schema_arrow.names, required, source)
        columns = list(dict.fromkeys(column for column in required.values() if column is not None))
        row_number = 0
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            for row in batch.to_pylist():
                image = row[image_column]
                yield {
                    "image": os.path.join(base_dir, image) if isinstance(image, str) else image,
                    "text": row[text_column],
                    "image_id": str(row[id_column]) if id_column else f"{name}:{row_number}",
                }
                row_number += 1


def read_chinese_clip(
    images_tsv: str | os.PathLike,
    texts_jsonl: str | os.PathLike,
    *,
    include_unpaired_images: bool = False,
    counter: BadSampleCounter | None = None,
) -> list[dict]:
    """One record per image from Chinese-CLIP's published format (`{split}_imgs.tsv` + `{split}_texts.jsonl`).

    The TSV holds `image_id<TAB>base64` lines; the JSONL holds `{"text_id", "text", "image_ids": [...]}`, so one
    text may describe several images and one image may have several texts. Each record carries all texts of its
    image (`text` and the parallel `text_ids`), which serves both uses:

    * training: `ImageTextDataset(records, caption_strategy="explode")` gives every (image, text) pair, exactly the
      pairs Chinese-CLIP trains on; `"sample"` gives one text per image per epoch.
    * evaluation: `build_eval_gallery(records)` de-duplicates texts by `text_id`, so a query that matches several
      images (MUGE) is one text with several positives. Pass `include_unpaired_images=True` to keep the images no
      text refers to: Chinese-CLIP ranks queries against every image in the TSV.

    Only byte offsets are kept for the images (see `TSVImageRef`), so the TSV is scanned once and not held in memory.

    Raises:
        DataFormatError: either file is missing.
    """
    require_file(images_tsv, "Chinese-CLIP image TSV")
    require_file(texts_jsonl, "Chinese-CLIP text JSONL")
    counter = counter if counter is not None else BadSampleCounter()
    tsv_path = os.path.abspath(images_tsv)
    offsets: dict[str, int] = {}
    with open(tsv_path, "rb") as handle:
        offset = 0
        for line_number, line in enumerate(handle, start=1):
            image_id, tab, _ = line.partition(b"\t")
            if not tab:
                if line.strip():
                    counter.record(f"{tsv_path}:{line_number}", "bad_record", "line has no tab separator")
            else:
                offsets.setdefault(image_id.decode("utf-8", errors="replace").strip(), offset)
            offset += len(line)

    texts: dict[str, list[tuple[str, str]]] = {image_id: [] for image_id in offsets}
    with open(texts_jsonl, encoding="utf-8-sig") as handle:
        for row in _iter_table_rows(handle, ".jsonl", os.fspath(texts_jsonl), counter):
            if not {"text_id", "text", "image_ids"} <= row.keys() or not isinstance(row["image_ids"], list):
                counter.record(str(row.get("text_id")), "bad_record", "needs text_id, text and an image_ids list")
                continue
            for image_id in map(str, row["image_ids"]):
                if image_id in texts:
                    texts[image_id].append((row["text"], str(row["text_id"])))
                else:
                    counter.record(
                        image_id, "missing_image", f"text {row['text_id']} refers to an id not in {tsv_path}"
                    )

    return [
        {
            "image": TSVImageRef(tsv_path, offsets[image_id]),
            "text": [text for text, _ in pairs],
            "text_ids": [text_id for _, text_id in pairs],
            "image_id": image_id,
        }
        for image_id, pairs in texts.items()
        if pairs or include_unpaired_images
    ]
