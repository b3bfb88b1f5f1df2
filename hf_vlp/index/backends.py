"""The faiss side of the index: building an exact (flat) or approximate (IVF-PQ, HNSW) inner-product index, and
setting its search-time parameters. faiss is imported only when an index is built or searched."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import IndexFormatError


__all__ = ["AUTO_APPROXIMATE_THRESHOLD", "apply_search_params", "make_faiss_index"]

# Past this many vectors `index_type="auto"` switches from the exact flat index (4*D bytes per vector, one full scan
# per query) to IVF-PQ (about D/8 + 8 bytes per vector); see benchmarks/bench_index.py for the measured trade-off.
AUTO_APPROXIMATE_THRESHOLD = 1_000_000


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
    apply_search_params(index, search_params)
    return index, params, train_rows


def apply_search_params(index: Any, search_params: dict[str, int]) -> None:
    import faiss

    if "nprobe" in search_params:
        faiss.extract_index_ivf(index).nprobe = int(search_params["nprobe"])
    if "efSearch" in search_params:
        faiss.downcast_index(index).hnsw.efSearch = int(search_params["efSearch"])
