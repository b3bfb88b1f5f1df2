"""`build_index` and `merge_index`: the resumable, shardable build of an index folder (see the package docstring).

The folder's layout while a build runs: `build.json` (the settings, so that a resume with other ones is refused),
one atomically written file per chunk (named by part and chunk), and one marker per finished part under `parts/`;
the merge turns them into the items table, the faiss index and `index.json`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.data import BadSampleCounter, DataFormatError

from .encoding import ChunkAccumulator, imap_records, light_record, prepare_image, stack_pixels
from .sources import IndexSource, captions_of


__all__ = ["IndexBuildResult", "build_index", "merge_index"]

logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"
PARTS_DIR = "parts"


@dataclass
class IndexBuildResult:
    """What one `build_index` call did. `finished` is False for a part of a multi-process build that left the merge
    to another process."""

    index_dir: str
    indexed: int
    skipped: dict[str, int] = field(default_factory=dict)
    chunks_written: int = 0
    chunks_reused: int = 0
    finished: bool = False
    manifest: dict[str, Any] | None = None


def _chunk_name(shard_index: int, num_shards: int, chunk: int) -> str:
    return f"part{shard_index:05d}of{num_shards:05d}-chunk{chunk:06d}"


def _part_marker(index_dir: str, shard_index: int, num_shards: int) -> Path:
    return Path(index_dir) / PARTS_DIR / f"part{shard_index:05d}of{num_shards:05d}.json"


def _write_build_settings(index_dir: str, settings: dict[str, Any]) -> None:
    """Record the build's settings, or check that a resumed build uses the same ones."""
    path = Path(index_dir) / BUILD_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        differing = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        if differing:
            raise DataFormatError(
                f"{index_dir} holds a build with other settings ({', '.join(differing)} differ); resume it with the "
                "same command, or pass a new --output"
            )
        return
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{BUILD_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(settings, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


def build_index(
    model: str,
    output: str,
    images: Sequence[str] = (),
    *,
    dataset: str | None = None,
    split: str = "train",
    image_column: str = "image",
    text_column: str = "text",
    id_column: str | None = None,
    modality: str = "image",
    revision: str | None = None,
    batch_size: int = 64,
    chunk_size: int = 4096,
    num_workers: int = 0,
    num_shards: int | None = None,
    shard_index: int | None = None,
    index_type: str = "auto",
    faiss_options: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_chunk_written: Callable[[str], None] | None = None,
    merge_timeout: float = 24 * 3600,
) -> IndexBuildResult:
    """Encode every image (or, with `modality="text"`, every caption) of a data source into an index folder.

    Args:
        model: saved hf-vlp folder or Hub id (recorded in the index with `revision` and an embedding fingerprint).
        output: the index folder; an unfinished build there with the same settings is resumed.
        images / dataset / split / *_column: the data source (see `IndexSource`).
        modality: `"image"` (an image gallery: text -> image and image -> image search) or `"text"` (a caption
            index: image -> text search).
        chunk_size: items per atomically written embedding chunk (the unit of resumption); a multiple of
            `batch_size` keeps the batches of a resumed build identical to an uninterrupted one.
        num_workers: image decoding / preprocessing processes (0: in this process).
        num_shards / shard_index: this process's share of a multi-process build (default: torchrun's `WORLD_SIZE`
            and `RANK`, else 1 and 0). The process with shard 0 merges once every part is done.
        index_type / faiss_options: the faiss index (`hf_vlp.index.make_faiss_index`).
        on_chunk_written: called with each chunk's name after it is on disk (progress hooks, tests).

    Raises:
        DataFormatError: a bad source, or `output` holds a build with other settings.
    """
    from hf_vlp.index import (
        MANIFEST_FILE,
        chunk_names,
        embedding_fingerprint,
        encode_images,
        encode_texts,
        load_model_and_processor,
        read_manifest,
    )

    if modality not in ("image", "text"):
        raise DataFormatError(f"modality must be 'image' or 'text', got {modality!r}")
    if batch_size < 1 or chunk_size < 1:
        raise DataFormatError("batch_size and chunk_size must be >= 1")
    if num_shards is None:
        num_shards = int(os.environ.get("WORLD_SIZE", "1"))
        shard_index = int(os.environ.get("RANK", "0")) if shard_index is None else shard_index
    shard_index = shard_index or 0
    if not 0 <= shard_index < num_shards:
        raise DataFormatError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")

    if (Path(output) / MANIFEST_FILE).is_file():
        manifest = read_manifest(output)
        logger.info("%s is already a finished index (%d items)", output, manifest["num_items"])
        return IndexBuildResult(output, manifest["num_items"], manifest["skipped"], finished=True, manifest=manifest)

    loaded, processor = load_model_and_processor(model, revision)
    loaded.to(device)
    token_wise = getattr(loaded.config, "similarity", "global") == "token_wise"
    model_record = {
        "name_or_path": os.path.abspath(model) if os.path.isdir(model) else model,
        "revision": revision,
        "class": type(loaded).__name__,
        "fingerprint": embedding_fingerprint(loaded, processor),
    }
    source = IndexSource(tuple(images), dataset, split, image_column, text_column, id_column)
    settings = {
        "model": {**model_record, "fingerprint": model_record["fingerprint"]["sha256"]},
        "modality": modality,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "num_shards": num_shards,
        **source.settings(),
    }
    _write_build_settings(output, settings)

    done = set(chunk_names(output))
    counter = BadSampleCounter()
    records = source.records(counter)
    result = IndexBuildResult(output, 0)
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"indexing {modality}s", unit=" records", disable=not progress)

    def mine() -> Iterator[tuple[int, int, dict]]:
        """(chunk, row, record) of this process's records in chunks not yet written; reused chunks are counted."""
        local = 0
        for row, record in enumerate(records):
            if row % num_shards != shard_index:
                continue
            chunk = local // chunk_size
            local += 1
            if _chunk_name(shard_index, num_shards, chunk) in done:
                bar.update(1)
                continue
            yield chunk, row, record

    if modality == "image":
        accumulator = ChunkAccumulator(
            lambda pixels: encode_images(loaded, processor, pixel_values=stack_pixels(pixels)), batch_size, token_wise
        )
        results: Iterator = imap_records(prepare_image, mine(), num_workers, processor.image_processor)
    else:
        accumulator = ChunkAccumulator(lambda texts: encode_texts(loaded, processor, texts), batch_size, token_wise)
        results = ((chunk, row, light_record(record), None, None) for chunk, row, record in mine())

    current: int | None = None
    for chunk, row, record, pixels, skip in results:
        if current is not None and chunk != current:
            _finish_chunk(accumulator, output, _chunk_name(shard_index, num_shards, current), result, on_chunk_written)
        current = chunk
        bar.update(1)
        item_id = str(record["image_id"])
        if modality == "image":
            if skip is not None:
                reason, _, detail = skip.partition("\t")
                counter.record(item_id, reason, detail)  # type: ignore[arg-type]
                accumulator.skip(reason)
                continue
            captions = captions_of(record["text"])
            accumulator.add(pixels, row, 0, item_id, record["path"], captions[0] if captions else None)
        else:
            captions = captions_of(record["text"])
            if not captions:
                counter.record(item_id, "empty_caption", "no caption to index")
                accumulator.skip("empty_caption")
            for sub, caption in enumerate(captions):
                accumulator.add(caption, row, sub, f"{item_id}#{sub}", record["path"], caption)
    if current is not None:
        _finish_chunk(accumulator, output, _chunk_name(shard_index, num_shards, current), result, on_chunk_written)
    bar.close()
    result.chunks_reused = len([n for n in done if n.startswith(f"part{shard_index:05d}of{num_shards:05d}-")])
    marker = _part_marker(output, shard_index, num_shards)
    marker.parent.mkdir(parents=True, exist_ok=True)
    # Rows the readers could not parse never reach a chunk: recorded here (every part reads the whole input, so the
    # merge takes part 0's count).
    marker.write_text(json.dumps({"bad_records": counter.as_dict().get("bad_record", 0)}))

    if shard_index != 0:
        return result
    _wait_for_parts(output, num_shards, merge_timeout)
    faiss_options = dict(faiss_options or {})
    manifest = merge_index(output, model_record, index_type=index_type, **faiss_options)
    result.finished, result.manifest = True, manifest
    result.skipped = manifest["skipped"]
    return result


def _finish_chunk(
    accumulator: ChunkAccumulator,
    output: str,
    name: str,
    result: IndexBuildResult,
    on_chunk_written: Callable[[str], None] | None,
) -> None:
    for reason, count in accumulator.skipped.items():
        result.skipped[reason] = result.skipped.get(reason, 0) + count
    result.indexed += accumulator.write(output, name)
    result.chunks_written += 1
    if on_chunk_written is not None:
        on_chunk_written(name)


def _wait_for_parts(output: str, num_shards: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [i for i in range(num_shards) if not _part_marker(output, i, num_shards).is_file()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DataFormatError(f"parts {missing} of {output} did not finish; build them, then `hf-vlp index merge`")
        time.sleep(1.0)


def merge_index(
    output: str, model_record: dict[str, Any] | None = None, *, index_type: str = "auto", **faiss_options: Any
) -> dict[str, Any]:
    """Finish a build whose parts are all done: the items table, the faiss index and `index.json`.

    `model_record` defaults to what the build recorded (`hf-vlp index merge` after a multi-process build).
    """
    from hf_vlp.index import embedding_fingerprint, finalize_index, load_model_and_processor

    settings_path = Path(output) / BUILD_FILE
    if not settings_path.is_file():
        raise DataFormatError(f"{output} has no index build to merge (no {BUILD_FILE})")
    settings = json.loads(settings_path.read_text())
    missing = [
        i for i in range(settings["num_shards"]) if not _part_marker(output, i, settings["num_shards"]).is_file()
    ]
    if missing:
        raise DataFormatError(f"parts {missing} of {output} are not finished; run their `hf-vlp index build` first")
    if model_record is None:
        model_record = {key: settings["model"][key] for key in ("name_or_path", "revision", "class")}
        model, processor = load_model_and_processor(model_record["name_or_path"], model_record["revision"])
        model_record["fingerprint"] = embedding_fingerprint(model, processor)
    bad_records = json.loads(_part_marker(output, 0, settings["num_shards"]).read_text()).get("bad_records", 0)
    manifest = {
        "model": model_record,
        "modality": settings["modality"],
        "similarity": "token_wise" if _is_token_wise(model_record) else "global",
        "source": {k: settings[k] for k in ("images", "dataset", "split", "columns")},
        "build": {k: settings[k] for k in ("chunk_size", "batch_size", "num_shards")},
    }
    if bad_records:
        manifest["reader_skipped"] = {"bad_record": bad_records}
    return finalize_index(output, manifest, index_type=index_type, **faiss_options)


def _is_token_wise(model_record: dict[str, Any]) -> bool:
    from transformers import AutoConfig

    import hf_vlp  # noqa: F401  (registers the hf-vlp configs)

    config = AutoConfig.from_pretrained(model_record["name_or_path"], revision=model_record.get("revision"))
    return getattr(config, "similarity", "global") == "token_wise"
