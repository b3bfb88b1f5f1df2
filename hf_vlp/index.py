"""A searchable image (or caption) index on faiss: the on-disk format, its writer and `VLPIndex` search.

Why faiss: a gallery of millions of items does not fit the in-memory chunked top-k of `hf_vlp.retrieval` (that is
an exact scan, fine for an eval gallery); faiss gives exact (`IndexFlatIP`) and approximate (IVF-PQ, HNSW) inner-
product search that users already deploy. This module owns the index *format* and *search*; building it from data
sources (readers, worker processes, progress, corrupt images) lives on the training side (`trainers.indexing`),
which writes through `write_chunk` / `finalize_index` here. Only torch, numpy, pyarrow and faiss are imported (never
`trainers`), so the Space and any inference service can load and search an index.

An index folder::

    index.json            manifest: model (path or Hub id + revision, embedding-space fingerprint), modality,
                          similarity, counts, faiss type and parameters (training sample included)
    items.parquet         one row per indexed item, in index order: row (position in the input), id, path, text,
                          and where its embedding lives (chunk, offset)
    faiss.index           the faiss index over the global embeddings (inner product of L2-normalised vectors)
    faiss_train_rows.npy  positions of the training sample (approximate indexes only)
    chunks/<name>/        embedding shards, each written atomically (a temporary folder renamed into place):
                          embeds.npy [n, D] float32, token_embeds.npy / token_mask.npy (token-wise models),
                          items.parquet, skipped.json

Search (`VLPIndex.search`): text -> image, image -> image, and image -> text on a caption index; token-wise (FILIP)
models take global-embedding candidates from faiss and re-score them exactly with the model's token-wise
`similarity`; fusion models can re-rank the top-k with their cross encoder (`rerank=True`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


__all__ = [
    "INDEX_FORMAT_VERSION",
    "IndexFormatError",
    "IndexModelMismatchError",
    "SearchHit",
    "VLPIndex",
    "chunk_names",
    "embedding_fingerprint",
    "encode_images",
    "encode_texts",
    "finalize_index",
    "load_model_and_processor",
    "make_faiss_index",
    "read_manifest",
    "write_chunk",
]

INDEX_FORMAT_VERSION = 1
MANIFEST_FILE = "index.json"
ITEMS_FILE = "items.parquet"
FAISS_FILE = "faiss.index"
TRAIN_ROWS_FILE = "faiss_train_rows.npy"
CHUNKS_DIR = "chunks"
# Past this many vectors `index_type="auto"` switches from the exact flat index (4*D bytes per vector, one full scan
# per query) to IVF-PQ (about D/8 + 8 bytes per vector); see benchmarks/bench_index.py for the measured trade-off.
AUTO_APPROXIMATE_THRESHOLD = 1_000_000
# Two embeddings of the fingerprint probe that differ by more than this belong to different embedding spaces.
FINGERPRINT_TOLERANCE = 1e-3
_PROBE_TEXT = "一张照片：左边是一个红色的圆形，右边是两个蓝色的三角形"


class IndexFormatError(ValueError):
    """The folder is not a (complete) hf-vlp index, or index parameters are invalid."""


class IndexModelMismatchError(ValueError):
    """The query model embeds into a different space than the model the index was built with."""


@dataclass
class SearchHit:
    """One search result. `position` indexes the index's items (and faiss ids); `row` is the item's place in the
    input the index was built from; `path` is the image file when the input named one."""

    score: float
    position: int
    row: int
    id: str
    path: str | None = None
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- models
def load_model_and_processor(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """`AutoModel` + `AutoProcessor` of a saved hf-vlp folder or Hub id, in eval mode."""
    from transformers import AutoModel, AutoProcessor

    from . import auto as _auto  # noqa: F401  (registers the hf-vlp Auto classes)

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    model = AutoModel.from_pretrained(name_or_path, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    return model, processor


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def encode_texts(model, processor, texts: Sequence[str]):
    """`model.encode_text` of a batch of strings (the model's retrieval embeddings, normalised)."""
    inputs = processor(text=list(texts))
    device = _model_device(model)
    names = ("input_ids", "attention_mask", "token_type_ids")
    return model.encode_text(**{name: inputs[name].to(device) for name in names if name in inputs})


@torch.inference_mode()
def encode_images(model, processor, images: Sequence[Any] | None = None, pixel_values: torch.Tensor | None = None):
    """`model.encode_image` of images (PIL images, paths, bytes or arrays) or of ready `pixel_values`."""
    if pixel_values is None:
        pixel_values = processor(images=list(images))["pixel_values"]
    return model.encode_image(pixel_values.to(_model_device(model)))


def _probe_image() -> np.ndarray:
    """A deterministic 64x64 RGB test card (gradients and a checkerboard): no file, no randomness."""
    y, x = np.mgrid[0:64, 0:64]
    card = np.stack([x * 4, y * 4, ((x // 8 + y // 8) % 2) * 255], axis=-1)
    return card.astype(np.uint8)


def embedding_fingerprint(model, processor) -> dict[str, Any]:
    """The model's embeddings of a fixed probe text and probe image, plus a short hash of them.

    Why: an index is only searchable with the model (and preprocessing) it was built with. Names and revisions can
    be re-used for different weights, so the index records where the embeddings *land*: a query model whose probe
    embeddings differ by more than `FINGERPRINT_TOLERANCE` (in any coordinate) embeds into another space. The
    tolerance absorbs float noise across BLAS builds and ONNX-vs-PyTorch, not a different checkpoint.
    """
    text = encode_texts(model, processor, [_PROBE_TEXT]).embeds[0].float().cpu().numpy()
    image = encode_images(model, processor, [_probe_image()]).embeds[0].float().cpu().numpy()
    digest = hashlib.sha256(np.round(np.concatenate([text, image]), 3).astype(np.float32).tobytes()).hexdigest()
    return {"sha256": digest[:16], "text": text.tolist(), "image": image.tolist()}


def _check_fingerprint(recorded: dict[str, Any], model, processor, index_dir: str) -> None:
    current = embedding_fingerprint(model, processor)
    for modality in ("text", "image"):
        expected, got = np.asarray(recorded[modality]), np.asarray(current[modality])
        if expected.shape != got.shape or float(np.abs(expected - got).max()) > FINGERPRINT_TOLERANCE:
            raise IndexModelMismatchError(
                f"the query model embeds into a different space than the model index {index_dir} was built with "
                f"(fingerprint {recorded['sha256']}, this model {current['sha256']}); search it with that model "
                "or rebuild the index with `hf-vlp index build --model YOUR_MODEL`"
            )


# ---------------------------------------------------------------------------------------------------- writing
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


def make_faiss_index(
    embeds: np.ndarray,
    index_type: str = "auto",
    *,
    nlist: int | None = None,
    pq_m: int | None = None,
    pq_bits: int = 8,
    hnsw_m: int = 32,
    train_size: int | None = None,
    seed: int = 0,
    auto_threshold: int = AUTO_APPROXIMATE_THRESHOLD,
    add_batch: int = 65536,
) -> tuple[Any, dict[str, Any], np.ndarray | None]:
    """Build a faiss inner-product index over `embeds` [N, D] (float32, L2-normalised).

    Args:
        index_type: `"flat"` (exact `IndexFlatIP`), `"ivfpq"` (`IVF{nlist},PQ{pq_m}`), `"hnsw"` (`HNSW{hnsw_m},Flat`),
            `"auto"` (flat up to `auto_threshold` vectors, IVF-PQ past it) or any faiss factory string.
        nlist: IVF lists; default `4 * sqrt(N)`, capped so every list gets ~39 training vectors.
        pq_m: PQ sub-quantisers of `pq_bits` bits each; default `D / 8` rounded down to a divisor of D.
        pq_bits: bits per sub-quantiser code (8: 256 centroids each; 4 trains ~16x faster, codes half the size).
        train_size: training sample of approximate indexes; default `min(N, max(64 * nlist, 16384))`.
        seed: seed of the training sample (recorded with the sample itself).

    Returns:
        `(index, params, train_rows)`: `params` records the factory string and every parameter (including the
        default search-time `nprobe` / `efSearch`), `train_rows` the sample's positions (None for untrained types).
    """
    import faiss

    num, dim = embeds.shape
    kind = index_type.lower()
    if kind == "auto":
        kind = "flat" if num <= auto_threshold else "ivfpq"
    params: dict[str, Any] = {"requested": index_type, "num_vectors": num, "dim": dim}
    search_params: dict[str, int] = {}
    if kind == "flat":
        factory = "Flat"
    elif kind == "ivfpq":
        nlist = nlist or max(1, min(int(4 * math.sqrt(num)), num // 39))
        pq_m = pq_m or max(d for d in range(1, max(dim // 8, 1) + 1) if dim % d == 0)
        if dim % pq_m:
            raise IndexFormatError(f"pq_m={pq_m} must divide the embedding size {dim}")
        factory = f"IVF{nlist},PQ{pq_m}" + ("" if pq_bits == 8 else f"x{pq_bits}")
        search_params["nprobe"] = min(nlist, 32)
        params.update(nlist=nlist, pq_m=pq_m, pq_bits=pq_bits)
    elif kind == "hnsw":
        factory = f"HNSW{hnsw_m},Flat"
        search_params["efSearch"] = 128
        params.update(hnsw_m=hnsw_m, ef_construction=80)
    else:
        factory = index_type
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexFormatError(f"faiss cannot build index type {factory!r}: {str(error).splitlines()[0]}") from None
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = 80
    train_rows = None
    if not index.is_trained:
        wanted = train_size or min(num, max(64 * (nlist or 256), 16384))
        if wanted > num:
            wanted = num
        train_rows = np.sort(np.random.default_rng(seed).choice(num, size=wanted, replace=False))
        try:
            index.train(np.ascontiguousarray(embeds[train_rows], dtype=np.float32))
        except RuntimeError as error:
            raise IndexFormatError(
                f"cannot train {factory} on {wanted} vectors: {str(error).splitlines()[0]}; use --index-type flat "
                "for small galleries"
            ) from None
        params.update(train_size=int(wanted), train_seed=seed)
    for start in range(0, num, add_batch):
        index.add(np.ascontiguousarray(embeds[start : start + add_batch], dtype=np.float32))
    params.update(factory=factory, kind=kind, search=search_params)
    _apply_search_params(index, search_params)
    return index, params, train_rows


def _apply_search_params(index: Any, search_params: dict[str, int]) -> None:
    import faiss

    if "nprobe" in search_params:
        faiss.extract_index_ivf(index).nprobe = int(search_params["nprobe"])
    if "efSearch" in search_params:
        faiss.downcast_index(index).hnsw.efSearch = int(search_params["efSearch"])


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
    store = _ChunkStore(index_dir, table)
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


class _ChunkStore:
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


# ---------------------------------------------------------------------------------------------------- search
@dataclass
class _Queries:
    modality: str
    values: list[Any] = field(default_factory=list)


class VLPIndex:
    """A built index folder, ready to search with its model.

    Example:

    ```python
    index = VLPIndex.load("my_index")  # loads the model recorded in the index
    for hit in index.search(texts=["一只红色的圆形"], k=5)[0]:
        print(hit.score, hit.path)
    ```
    """

    def __init__(self, index_dir: Path, manifest: dict[str, Any], faiss_index: Any, table, model, processor) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self.faiss_index = faiss_index
        self.items = table
        self.model = model
        self.processor = processor
        self._store = _ChunkStore(index_dir, table)
        self._ids = table.column("id").to_pylist()
        self._paths = table.column("path").to_pylist()
        self._texts = table.column("text").to_pylist()
        self._rows = table.column("row").to_numpy()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike,
        model: Any = None,
        processor: Any = None,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        check_model: bool = True,
    ) -> VLPIndex:
        """Open an index; without `model`, load the model (and processor) the index records.

        Raises:
            IndexFormatError: the folder is not a finished hf-vlp index.
            IndexModelMismatchError: `model` embeds into another space than the index's model.
        """
        import faiss
        import pyarrow.parquet as pq

        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        if model is None:
            recorded = manifest["model"]
            model, loaded_processor = load_model_and_processor(
                recorded["name_or_path"], revision or recorded.get("revision"), trust_remote_code
            )
            processor = processor or loaded_processor
        elif processor is None:
            raise IndexFormatError("pass the model's processor with the model (VLPIndex.load(dir, model, processor))")
        if check_model:
            _check_fingerprint(manifest["model"]["fingerprint"], model, processor, str(index_dir))
        faiss_index = faiss.read_index(str(index_dir / FAISS_FILE))
        _apply_search_params(faiss_index, manifest["faiss"].get("search", {}))
        return cls(index_dir, manifest, faiss_index, pq.read_table(index_dir / ITEMS_FILE), model, processor)

    def __len__(self) -> int:
        return self.items.num_rows

    @property
    def modality(self) -> str:
        """`"image"` for an image gallery, `"text"` for a caption index."""
        return self.manifest["modality"]

    @property
    def token_wise(self) -> bool:
        return self.manifest.get("similarity") == "token_wise"

    def embeddings(self, positions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The stored global embeddings [n, D] (all items, or those at `positions`)."""
        if positions is None:
            positions = np.arange(len(self))
        return self._store.embeds(np.asarray(positions))

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall on approximate indexes (IVF `nprobe`, HNSW `efSearch`)."""
        _apply_search_params(self.faiss_index, {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v})

    # ------------------------------------------------------------------ search
    @property
    def approximate(self) -> bool:
        """True when faiss answers approximately (IVF-PQ, HNSW ...), so results are refined with stored embeddings."""
        return self.manifest["faiss"].get("kind") != "flat"

    def search_embeddings(
        self, queries: np.ndarray | torch.Tensor, k: int, refine: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss search of raw query embeddings [Q, D]: `(scores, positions)`, both [Q, min(k, len)], best first.

        `refine`: ask faiss for that many candidates and re-score them exactly with the stored float32 embeddings
        (memory-mapped from the chunks, so the index stays compact in RAM): recovers most of what PQ compression
        loses. Default: `max(4 * k, 40)` for approximate indexes, none for the exact flat index.
        """
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest["embedding_dim"]:
            raise IndexFormatError(
                f"queries must be [Q, {self.manifest['embedding_dim']}], got {tuple(queries.shape)}"
            )
        k = min(k, len(self))
        if refine is None:
            refine = max(4 * k, 40) if self.approximate else 0
        if refine <= k:
            return self.faiss_index.search(queries, k)
        _, candidates = self.faiss_index.search(queries, min(refine, len(self)))
        out_scores, out_positions = [], []
        for query, row in zip(queries, candidates):
            row = row[row >= 0]
            exact = self._store.embeds(row) @ query
            order = np.argsort(-exact, kind="stable")[:k]
            out_scores.append(exact[order])
            out_positions.append(row[order])
        return _pad_rows(out_scores, out_positions)

    def search(
        self,
        texts: str | Sequence[str] | None = None,
        images: Any | Sequence[Any] | None = None,
        k: int = 10,
        *,
        rerank: bool = False,
        candidates: int | None = None,
        combine: str | float = "sum",
    ) -> list[list[SearchHit]]:
        """Search with a batch of text queries or of image queries; one best-first list of hits per query.

        Text queries on an image index search text -> image; image queries search image -> image (by the global
        image embeddings), or image -> text on a caption index. Token-wise models re-score `candidates` faiss
        candidates (default `max(10 * k, 100)`) exactly with the model's token-wise similarity across modalities.
        `rerank=True` re-scores the top `max(candidates, k)` (default `k`) with a fusion model's cross
        encoder (`combine` as in `FusionEncoderForRetrieval.rank`), re-encoding the candidates from their stored
        paths / texts.

        Args:
            texts: one string or a list of strings.
            images: one image (PIL image, path, bytes, array) or a list of them.
            k: hits per query.
        """
        queries = self._queries(texts, images)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries.values:
            return []
        cross_modal = queries.modality != self.modality
        if queries.modality == "text":
            query_emb = encode_texts(self.model, self.processor, queries.values)
        else:
            query_emb = encode_images(self.model, self.processor, queries.values)
        exact_rescore = cross_modal and self.token_wise
        if rerank and not (cross_modal and hasattr(self.model, "rerank_scores")):
            raise ValueError(
                "rerank=True needs a fusion model (FusionEncoderForRetrieval) and a cross-modal search "
                "(text queries on an image index, or image queries on a caption index)"
            )
        wanted = k
        if exact_rescore:
            wanted = candidates or max(10 * k, 100)
        elif rerank:
            wanted = max(candidates or k, k)
        scores, positions = self.search_embeddings(query_emb.embeds, wanted)
        if exact_rescore:
            scores, positions = self._token_wise_rescore(query_emb, queries.modality, positions)
        if rerank:
            scores, positions = self._fusion_rerank(query_emb, queries.modality, scores, positions, combine)
        return [
            [self._hit(float(s), int(p)) for s, p in zip(row_scores[:k], row_positions[:k]) if p >= 0]
            for row_scores, row_positions in zip(scores, positions)
        ]

    def _queries(self, texts, images) -> _Queries:
        if (texts is None) == (images is None):
            raise ValueError("search needs either texts=... or images=... (one of them)")
        if texts is not None:
            values = [texts] if isinstance(texts, str) else list(texts)
            if any(not isinstance(t, str) or not t.strip() for t in values):
                raise ValueError("every text query must be a non-empty string")
            return _Queries("text", values)
        is_batch = isinstance(images, (list, tuple))
        return _Queries("image", list(images) if is_batch else [images])

    def _hit(self, score: float, position: int) -> SearchHit:
        return SearchHit(
            score=score,
            position=position,
            row=int(self._rows[position]),
            id=self._ids[position],
            path=self._paths[position],
            text=self._texts[position],
        )

    def _gallery_embeddings(self, positions: np.ndarray):
        from .models import RetrievalEmbeddings

        device = _model_device(self.model)
        tokens, mask = self._store.tokens(positions)
        return RetrievalEmbeddings(
            embeds=torch.from_numpy(self._store.embeds(positions)).to(device),
            token_embeds=torch.from_numpy(tokens).to(device),
            token_mask=torch.from_numpy(mask).to(device),
        )

    @torch.inference_mode()
    def _token_wise_rescore(self, query_emb, query_modality: str, positions: np.ndarray):
        """Exact FILIP scores of each query against its faiss candidates, re-sorted (stable: faiss order on ties)."""
        out_scores, out_positions = [], []
        for q, row in enumerate(positions):
            row = row[row >= 0]
            gallery = self._gallery_embeddings(row)
            query = query_emb.__class__(**{name: value[q : q + 1] for name, value in query_emb.items()})
            if query_modality == "text":  # image gallery: FILIP's text-to-image direction
                sim = self.model.similarity(gallery, query)[1][:, 0]
            else:
                sim = self.model.similarity(query, gallery)[0][0]
            order = torch.sort(sim.float().cpu(), descending=True, stable=True)
            out_scores.append(order.values.numpy())
            out_positions.append(row[order.indices.numpy()])
        return _pad_rows(out_scores, out_positions)

    @torch.inference_mode()
    def _fusion_rerank(self, query_emb, query_modality: str, scores: np.ndarray, positions: np.ndarray, combine):
        """Cross-encoder re-rank of the candidates, re-encoded from their stored image paths or texts."""
        from .models import FusionRetrievalEmbeddings
        from .retrieval import rerank_topk

        unique = np.unique(positions[positions >= 0])
        if self.modality == "image":
            paths = [self._paths[p] for p in unique]
            if any(p is None or not os.path.isfile(p) for p in paths):
                raise IndexFormatError(
                    "fusion re-ranking re-reads the candidate images, but some stored paths are gone"
                )
            gallery = encode_images(self.model, self.processor, paths)
        else:
            gallery = encode_texts(self.model, self.processor, [self._texts[p] for p in unique])
        slot = {int(p): i for i, p in enumerate(unique)}
        valid = positions >= 0
        if not valid.all():
            raise IndexFormatError("the index holds fewer items than the re-rank candidates asked for")
        local = torch.tensor([[slot[int(p)] for p in row] for row in positions], dtype=torch.long)

        def pair_scorer(q_idx: torch.Tensor, c_idx: torch.Tensor) -> torch.Tensor:
            queries = FusionRetrievalEmbeddings(**{n: v[q_idx] for n, v in query_emb.items() if v is not None})
            items = gallery.select(c_idx)
            pair = (queries, items) if query_modality == "image" else (items, queries)
            return self.model.rerank_scores(*pair)

        new_scores, new_local = rerank_topk(None, local, torch.from_numpy(scores).float(), pair_scorer, combine)
        new_positions = unique[new_local.numpy()]
        return new_scores.numpy(), new_positions


def _pad_rows(scores: list[np.ndarray], positions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in positions)
    out_s = np.full((len(scores), width), -np.inf, dtype=np.float32)
    out_p = np.full((len(scores), width), -1, dtype=np.int64)
    for i, (s, p) in enumerate(zip(scores, positions)):
        out_s[i, : len(s)] = s
        out_p[i, : len(p)] = p
    return out_s, out_p


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
