"""The on-disk index format: chunk shards, the items table, the manifest, and reading embeddings back.

`write_chunk` writes one shard atomically (the training side's builder calls it per chunk, so a killed build
resumes); `finalize_index` turns the finished shards into a searchable folder (items in input order, the faiss index
of `backends.py`, `index.json`); `read_manifest` and `ChunkStore` read a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import make_faiss_index
from .errors import IndexFormatError


__all__ = [
    "CHUNKS_DIR",
    "ChunkStore",
    "FAISS_FILE",
    "INDEX_FORMAT_VERSION",
    "ITEMS_FILE",
    "MANIFEST_FILE",
    "TRAIN_ROWS_FILE",
    "chunk_names",
    "finalize_index",
    "read_manifest",
    "write_chunk",
]

INDEX_FORMAT_VERSION = 1
MANIFEST_FILE = "index.json"
ITEMS_FILE = "items.parquet"
FAISS_FILE = "faiss.index"
TRAIN_ROWS_FILE = "faiss_train_rows.npy"
CHUNKS_DIR = "chunks"


def chunk_names(index_dir: str | os.PathLike) -> list[str]:
    """Names of the completed embedding chunks (a chunk exists only once fully written)."""
    folder = Path(index_dir) / CHUNKS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_chunk(
    index_dir: str | os.PathLike,
    name: str,
    embeds: np.ndarray,
    items: dict[str, Sequence[Any]],
    skipped: dict[str, int],
    token_embeds: np.ndarray | None = None,
    token_mask: np.ndarray | None = None,
) -> Path:
    """Write one embedding chunk atomically: into a hidden temporary folder, then renamed into place.

    A build killed mid-chunk leaves only a hidden temporary folder (ignored and replaced on resume), never a partial
    chunk, so "the chunk exists" means "its items are done". `items` holds equal-length columns `row` (position in
    the input), `id`, `path`, `text` and optionally `sub` (the caption number within its input row, for caption
    indexes); `skipped` the per-reason counts of input items this chunk dropped.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(index_dir) / CHUNKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    np.save(tmp / "embeds.npy", np.ascontiguousarray(embeds, dtype=np.float32))
    if token_embeds is not None:
        np.save(tmp / "token_embeds.npy", np.ascontiguousarray(token_embeds, dtype=np.float32))
        np.save(tmp / "token_mask.npy", np.ascontiguousarray(token_mask, dtype=np.int8))
    table = pa.table(
        {
            "row": pa.array(items["row"], type=pa.int64()),
            "sub": pa.array(items.get("sub", [0] * len(items["row"])), type=pa.int32()),
            "id": pa.array([str(v) for v in items["id"]], type=pa.string()),
            "path": pa.array(items["path"], type=pa.string()),
            "text": pa.array(items["text"], type=pa.string()),
        }
    )
    pq.write_table(table, tmp / ITEMS_FILE)
    (tmp / "skipped.json").write_text(json.dumps(skipped))
    if final.exists():  # a re-run of the same chunk (same inputs, same model): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _read_chunk_tables(index_dir: Path, names: Sequence[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for name in names:
        table = pq.read_table(index_dir / CHUNKS_DIR / name / ITEMS_FILE)
        table = table.append_column("chunk", pa.array([name] * table.num_rows, type=pa.string()))
        table = table.append_column("offset", pa.array(np.arange(table.num_rows), type=pa.int64()))
        tables.append(table)
    return pa.concat_tables(tables)


def finalize_index(
    index_dir: str | os.PathLike,
    manifest: dict[str, Any],
    index_type: str = "auto",
    **faiss_kwargs: Any,
) -> dict[str, Any]:
    """Turn the completed chunks of `index_dir` into a searchable index: items table, faiss index, manifest.

    Items are put in input order (by `row`), whatever the order the chunks were written in (one process or many),
    so every way of building the same input gives the same index. `manifest` carries what the builder knows (model,
    fingerprint, modality, similarity, source); counts and faiss parameters are added here. Returns the manifest.
    """
    import faiss
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    index_dir = Path(index_dir)
    names = chunk_names(index_dir)
    if not names:
        raise IndexFormatError(f"{index_dir} has no embedding chunks to index")
    table = _read_chunk_tables(index_dir, names)
    if table.num_rows == 0:
        raise IndexFormatError(f"no item of the input could be indexed into {index_dir} (all were skipped)")
    table = table.take(pc.sort_indices(table, sort_keys=[("row", "ascending"), ("sub", "ascending")]))
    keys = np.stack([table.column("row").to_numpy(), table.column("sub").to_numpy().astype(np.int64)], axis=1)
    if len(np.unique(keys, axis=0)) != len(keys):
        raise IndexFormatError(f"{index_dir} holds chunks of two builds (duplicate input rows); use a fresh --output")
    store = ChunkStore(index_dir, table)
    embeds = store.embeds(np.arange(table.num_rows))
    index, params, train_rows = make_faiss_index(embeds, index_type, **faiss_kwargs)
    skipped: dict[str, int] = dict(manifest.pop("reader_skipped", {}))
    for name in names:
        for reason, count in json.loads((index_dir / CHUNKS_DIR / name / "skipped.json").read_text()).items():
            skipped[reason] = skipped.get(reason, 0) + count
    faiss.write_index(index, str(index_dir / FAISS_FILE))
    if train_rows is not None:
        np.save(index_dir / TRAIN_ROWS_FILE, train_rows)
        params["train_rows_file"] = TRAIN_ROWS_FILE
    pq.write_table(table, index_dir / ITEMS_FILE)
    manifest = {
        **manifest,
        "format_version": INDEX_FORMAT_VERSION,
        "num_items": table.num_rows,
        "embedding_dim": int(embeds.shape[1]),
        "skipped": skipped,
        "faiss": params,
    }
    _write_json_atomic(index_dir / MANIFEST_FILE, manifest)
    return manifest


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


class ChunkStore:
    """Embeddings of the index, read from the chunks' memory-mapped `.npy` files by item position."""

    def __init__(self, index_dir: Path, table) -> None:
        self.index_dir = index_dir
        self.chunk = np.asarray(table.column("chunk").to_pylist())
        self.offset = table.column("offset").to_numpy()
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def _array(self, chunk: str, name: str) -> np.ndarray:
        key = (chunk, name)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.index_dir / CHUNKS_DIR / chunk / f"{name}.npy", mmap_mode="r")
        return self._arrays[key]

    def _rows_of(self, positions: np.ndarray, name: str) -> list[np.ndarray]:
        return [self._array(str(self.chunk[p]), name)[self.offset[p]] for p in np.asarray(positions, dtype=np.int64)]

    def embeds(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        # Any chunk an item lives in has rows (a chunk whose inputs were all skipped holds no item).
        dim = self._array(str(self.chunk[positions[0] if len(positions) else 0]), "embeds").shape[1]
        out = np.empty((len(positions), dim), dtype=np.float32)
        chunks = self.chunk[positions]
        for chunk in np.unique(chunks):
            where = np.nonzero(chunks == chunk)[0]
            out[where] = self._array(str(chunk), "embeds")[self.offset[positions[where]]]
        return out

    def tokens(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token embeddings and masks of `positions`, zero-padded to the longest (chunks pad texts differently)."""
        tokens = self._rows_of(positions, "token_embeds")
        masks = self._rows_of(positions, "token_mask")
        length = max(t.shape[0] for t in tokens)
        out = np.zeros((len(tokens), length, tokens[0].shape[1]), dtype=np.float32)
        mask = np.zeros((len(tokens), length), dtype=np.int64)
        for i, (t, m) in enumerate(zip(tokens, masks)):
            out[i, : t.shape[0]] = t
            mask[i, : m.shape[0]] = m
        return out, mask


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The index's `index.json`, with one clear error when the folder is not a finished index."""
    index_dir = Path(index_dir)
    manifest_path = index_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        if chunk_names(index_dir):
            raise IndexFormatError(
                f"{index_dir} is an unfinished index build; run the same `hf-vlp index build` again to resume it "
                "(or `hf-vlp index merge` after a multi-process build)"
            )
        raise IndexFormatError(
            f"{index_dir} is not an hf-vlp index (no {MANIFEST_FILE}); build one with `hf-vlp index build`"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != INDEX_FORMAT_VERSION:
        raise IndexFormatError(
            f"{index_dir} has index format {manifest.get('format_version')}, this hf-vlp reads {INDEX_FORMAT_VERSION}"
        )
    return manifest
