"""Streaming shards: webdataset-style tar shards, and `read_shard`, which picks a shard's reader by its suffix.

A shard is read as a stream, member by member or row by row, local or behind an fsspec URL (`hf://`, `s3://`, ...),
so `StreamingImageTextDataset` can spread shards over workers and nodes without downloading them first. The records
have the shape of every other reader's (see `trainers.data.readers`).
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

from .bad_samples import BadSampleCounter, DataFormatError
from .readers import CAPTION_FILE_SUFFIXES, open_binary, read_caption_file, read_parquet, require_file


__all__ = ["SHARD_SUFFIXES", "check_shard_paths", "read_shard", "read_webdataset_tar"]

_WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SHARD_SUFFIXES = (*_TAR_SUFFIXES, *CAPTION_FILE_SUFFIXES, ".parquet")


def read_webdataset_tar(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    counter: BadSampleCounter | None = None,
) -> Iterator[dict]:
    """Records from a webdataset-style tar shard: `key.jpg|jpeg|png|webp|bmp` next to `key.txt` and/or `key.json`.

    The tar is read in stream mode (`r|*`, gzip allowed) member by member, so nothing is extracted and a remote shard
    is never downloaded in full; members of one sample must be adjacent, as webdataset writers make them. The caption
    comes from `key.txt`, else from the `text_column` field of `key.json`. `image_id` is `<shard name>/<key>`: keys
    are only unique within a shard in many dumps, and merging two different pictures under one id would turn a
    negative pair into a false positive.
    """
    require_file(path, "Tar shard")
    return _iter_webdataset_tar(os.fspath(path), text_column, counter if counter is not None else BadSampleCounter())


def _iter_webdataset_tar(source: str, text_column: str, counter: BadSampleCounter) -> Iterator[dict]:
    shard_name = posixpath.basename(source.split("?")[0])
    with open_binary(source) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        key: str | None = None
        parts: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            directory, basename = posixpath.split(member.name)
            stem, dot, extension = basename.partition(".")
            if not dot:
                continue
            member_key = posixpath.join(directory, stem)
            if member_key != key:
                if key is not None:
                    yield _webdataset_record(shard_name, key, parts, text_column, counter)
                key, parts = member_key, {}
            extension = extension.lower()
            if extension in _WEBDATASET_IMAGE_EXTENSIONS or extension in ("txt", "json"):
                extracted = tar.extractfile(member)
                parts[extension] = extracted.read() if extracted is not None else b""
        if key is not None:
            yield _webdataset_record(shard_name, key, parts, text_column, counter)


def _webdataset_record(
    shard_name: str, key: str, parts: dict[str, bytes], text_column: str, counter: BadSampleCounter
) -> dict:
    """Assemble one sample; a missing image or caption is left as None for the dataset to count and skip."""
    image_id = f"{shard_name}/{key}"
    image = next((parts[ext] for ext in _WEBDATASET_IMAGE_EXTENSIONS if ext in parts), None)
    text: Any = None
    if "txt" in parts:
        text = parts["txt"].decode("utf-8", errors="replace")
    elif "json" in parts:
        try:
            metadata = json.loads(parts["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            counter.record(image_id, "bad_record", f"invalid JSON in {key}.json: {error}")
        else:
            text = metadata.get(text_column) if isinstance(metadata, dict) else None
    return {"image": image, "text": text, "image_id": image_id}


def read_shard(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    text_column: str = "text",
    captions_column: str | None = None,
    id_column: str | None = None,
    counter: BadSampleCounter | None = None,
) -> Iterator[dict]:
    """Records from one streaming shard, picking the reader by suffix: `.tar`/`.tar.gz`/`.tgz`, `.jsonl`/`.csv`,
    `.parquet`. Column arguments apply where the format has columns (`text_column` is the JSON field for tars).

    Raises:
        DataFormatError: the suffix is none of these.
    """
    name = _shard_name(path)
    if name.endswith(_TAR_SUFFIXES):
        return read_webdataset_tar(path, text_column=text_column, counter=counter)
    if name.endswith(CAPTION_FILE_SUFFIXES):
        return read_caption_file(
            path,
            image_column=image_column,
            text_column=text_column,
            captions_column=captions_column,
            id_column=id_column,
            counter=counter,
        )
    if name.endswith(".parquet"):
        return read_parquet(path, image_column=image_column, text_column=text_column, id_column=id_column)
    raise DataFormatError(f"Unknown shard type (expected one of {', '.join(SHARD_SUFFIXES)}): {os.fspath(path)}")


def _shard_name(path: str | os.PathLike) -> str:
    return os.fspath(path).split("?")[0].lower()


def check_shard_paths(shards: Sequence[str | os.PathLike]) -> None:
    """Fail fast on shard names `read_shard` cannot handle, before any worker starts.

    Raises:
        DataFormatError: the list is empty or a shard has an unknown suffix.
    """
    if not shards:
        raise DataFormatError("No shards given")
    for shard in shards:
        if not _shard_name(shard).endswith(SHARD_SUFFIXES):
            raise DataFormatError(
                f"Unknown shard type (expected one of {', '.join(SHARD_SUFFIXES)}): {os.fspath(shard)}"
            )
