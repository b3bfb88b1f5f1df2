"""Build an hf-vlp search index from a data source (the job behind `hf-vlp index build` / `merge`).

The index format and its search live in `hf_vlp.index` (the model side, loadable by a Space or a service); this module
is the data side of it: the `trainers.data` readers (image folders, JSONL/CSV/parquet lists, tar shards, `datasets`
datasets), image decoding in worker processes, batched encoding, corrupt images counted and skipped, and a build that
survives being killed.

Resumable by construction: the input (in the readers' deterministic order) is cut into chunks of `chunk_size` items;
a chunk's embeddings are written atomically (`hf_vlp.index.write_chunk`), so after a kill the next run skips the
chunks that exist and recomputes only the rest, batch for batch as the first run would have, and ends with the same
index. Several processes share the work by input row (`row % num_shards == shard_index`, or torchrun's
`RANK`/`WORLD_SIZE`); each marks its part done, and the merge (`finalize`, run by the single process, rank 0, or
`hf-vlp index merge`) orders the items by input row, so every way of building one input gives the same index.
"""

from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainers.data import BadSampleCounter, DataFormatError
from trainers.data.bad_samples import BadSampleError
from trainers.data.images import decode_image
from trainers.data.readers import read_hf_dataset, read_image_folder, read_shard


__all__ = [
    "IMAGE_EXTENSIONS",
    "IndexBuildResult",
    "build_index",
    "iter_source_records",
    "merge_index",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BUILD_FILE = "build.json"
DEMO_SOURCES = ("demo:eval", "demo:train")
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


# ---------------------------------------------------------------------------------------------------- sources
def _plain_image_folder(folder: Path) -> Iterator[dict]:
    """Every image file under `folder` (sorted, recursive): a product-photo folder with no captions."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    for path in files:
        yield {"image": str(path.resolve()), "text": None, "image_id": str(path.relative_to(folder))}


def iter_source_records(
    images: Sequence[str] = (),
    *,
    dataset: str | None = None,
    split: str = "train",
    image_column: str = "image",
    text_column: str = "text",
    id_column: str | None = None,
    counter: BadSampleCounter | None = None,
) -> Iterator[dict]:
    """Records (`{"image", "text", "image_id"}`) of the given sources, in a deterministic order.

    `images` entries may be a folder (a `datasets` imagefolder with `metadata.jsonl`/`.csv`, or any folder of image
    files), tar shards, JSONL/CSV/parquet lists, glob patterns of those, or `demo:eval` / `demo:train` (the built-in
    demo set `hf-vlp pretrain --recipe demo` trains on); `dataset` a `datasets` Hub id or a `save_to_disk` folder.

    Raises:
        DataFormatError: a source does not exist or has an unknown type.
    """
    if not images and dataset is None:
        raise DataFormatError("give --images (folders, tar shards, JSONL/CSV/parquet lists) or --dataset")
    for entry in images:
        if entry in DEMO_SOURCES:
            entry = str(_demo_split(entry.partition(":")[2]))
        paths = sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry]
        if not paths:
            raise DataFormatError(f"no file matches {entry}")
        for path in paths:
            if os.path.isdir(path):
                has_metadata = any(os.path.isfile(os.path.join(path, m)) for m in ("metadata.jsonl", "metadata.csv"))
                if has_metadata:
                    yield from read_image_folder(path, text_column=text_column, id_column=id_column, counter=counter)
                else:
                    yield from _plain_image_folder(Path(path))
            elif os.path.exists(path):
                yield from read_shard(
                    path, image_column=image_column, text_column=text_column, id_column=id_column, counter=counter
                )
            else:
                raise DataFormatError(f"image source not found: {path}")
    if dataset is not None:
        yield from read_hf_dataset(
            dataset, split=split, image_column=image_column, text_column=text_column, id_column=id_column
        )


def _demo_split(split: str) -> Path:
    """The built-in demo set's `split` folder (rendered on first use, in the same cache as `hf-vlp pretrain`'s)."""
    from trainers.arguments import DataArguments
    from trainers.cli.sources import demo_data_dir

    return demo_data_dir(DataArguments()) / split


def _image_path(ref: Any) -> str | None:
    """The file an image reference names, when there is one on disk (thumbnails and re-ranking re-read it)."""
    if isinstance(ref, str | os.PathLike):
        return os.path.abspath(ref)
    if isinstance(ref, dict) and ref.get("bytes") is None and ref.get("path") and os.path.isfile(ref["path"]):
        return os.path.abspath(ref["path"])
    return None


def _captions(text: Any) -> list[str]:
    if isinstance(text, str):
        return [text] if text.strip() else []
    if isinstance(text, list | tuple):
        return [str(t) for t in text if isinstance(t, str) and t.strip()]
    return []


# ---------------------------------------------------------------------------------------------------- workers
_WORKER_PROCESSOR: Any = None


def _init_worker(image_processor: Any) -> None:
    global _WORKER_PROCESSOR
    _WORKER_PROCESSOR = image_processor


def _prepare_image(job: tuple[int, int, dict]) -> tuple[int, int, dict, np.ndarray | None, str | None]:
    """Decode + preprocess one record in a worker: `(chunk, row, record, pixels or None, skip reason or None)`."""
    chunk, row, record = job
    from hf_vlp.models import InvalidImageError

    try:
        image = decode_image(record["image"])
        pixels = _WORKER_PROCESSOR(images=[image], return_tensors="np")["pixel_values"][0]
    except BadSampleError as error:
        return chunk, row, _light(record), None, f"{error.reason}\t{error.detail}"
    except InvalidImageError as error:
        return chunk, row, _light(record), None, f"corrupt_image\t{error}"
    return chunk, row, _light(record), pixels.astype(np.float32), None


def _light(record: dict) -> dict:
    """The record without its image payload (bytes are not sent back from the worker)."""
    return {"path": _image_path(record["image"]), "text": record.get("text"), "image_id": record.get("image_id")}


def _imap(function: Callable, jobs: Iterable, num_workers: int, image_processor: Any) -> Iterator:
    if num_workers <= 0:
        _init_worker(image_processor)
        yield from map(function, jobs)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(num_workers, initializer=_init_worker, initargs=(image_processor,)) as pool:
        yield from pool.imap(function, jobs, chunksize=8)


# ---------------------------------------------------------------------------------------------------- building
class _ChunkAccumulator:
    """Collects one chunk's encoded items, encodes in fixed batches, and writes the chunk when it is complete."""

    def __init__(self, encode: Callable[[list[Any]], Any], batch_size: int, token_wise: bool) -> None:
        self.encode = encode
        self.batch_size = batch_size
        self.token_wise = token_wise
        self.reset()

    def reset(self) -> None:
        self.inputs: list[Any] = []
        self.items: dict[str, list] = {"row": [], "sub": [], "id": [], "path": [], "text": []}
        self.embeds: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.skipped: dict[str, int] = {}

    def add(self, value: Any, row: int, sub: int, item_id: str, path: str | None, text: str | None) -> None:
        self.inputs.append(value)
        for key, v in (("row", row), ("sub", sub), ("id", item_id), ("path", path), ("text", text)):
            self.items[key].append(v)
        if len(self.inputs) == self.batch_size:
            self.flush()

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def flush(self) -> None:
        if not self.inputs:
            return
        out = self.encode(self.inputs)
        self.embeds.append(out.embeds.float().cpu().numpy())
        if self.token_wise:
            self.tokens.append(out.token_embeds.float().cpu().numpy())
            self.masks.append(out.token_mask.cpu().numpy())
        self.inputs = []

    def write(self, index_dir: str, name: str) -> int:
        from hf_vlp.index import write_chunk

        self.flush()
        count = len(self.items["row"])
        dim = self.embeds[0].shape[1] if self.embeds else 0
        embeds = np.concatenate(self.embeds) if self.embeds else np.zeros((0, dim), np.float32)
        tokens = masks = None
        if self.token_wise and self.tokens:
            length = max(t.shape[1] for t in self.tokens)
            tokens = np.concatenate([np.pad(t, ((0, 0), (0, length - t.shape[1]), (0, 0))) for t in self.tokens])
            masks = np.concatenate([np.pad(m, ((0, 0), (0, length - m.shape[1]))) for m in self.masks])
        write_chunk(index_dir, name, embeds, self.items, self.skipped, tokens, masks)
        self.reset()
        return count


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
        images / dataset / split / *_column: the data source (see `iter_source_records`).
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
    settings = {
        "model": {**model_record, "fingerprint": model_record["fingerprint"]["sha256"]},
        "modality": modality,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "num_shards": num_shards,
        "images": [os.path.abspath(p) if os.path.exists(p) and p not in DEMO_SOURCES else p for p in images],
        "dataset": dataset,
        "split": split if dataset else None,
        "columns": [image_column, text_column, id_column],
    }
    _write_build_settings(output, settings)

    done = set(chunk_names(output))
    counter = BadSampleCounter()
    records = iter_source_records(
        images,
        dataset=dataset,
        split=split,
        image_column=image_column,
        text_column=text_column,
        id_column=id_column,
        counter=counter,
    )
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
        accumulator = _ChunkAccumulator(
            lambda pixels: encode_images(loaded, processor, pixel_values=_stack(pixels)), batch_size, token_wise
        )
        results: Iterator = _imap(_prepare_image, mine(), num_workers, processor.image_processor)
    else:
        accumulator = _ChunkAccumulator(lambda texts: encode_texts(loaded, processor, texts), batch_size, token_wise)
        results = ((chunk, row, _light(record), None, None) for chunk, row, record in mine())

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
            captions = _captions(record["text"])
            accumulator.add(pixels, row, 0, item_id, record["path"], captions[0] if captions else None)
        else:
            captions = _captions(record["text"])
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


def _stack(pixels: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(pixels))


def _finish_chunk(
    accumulator: _ChunkAccumulator,
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
