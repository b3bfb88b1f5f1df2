"""`VLPIndex`: a built index folder loaded with its model, searched by text or image.

faiss gives the global-embedding candidates; token-wise (FILIP) models re-score them exactly with the model's
`similarity`, and fusion models can re-rank the top-k with their cross encoder (`rerank=True`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import apply_search_params
from .encoding import check_fingerprint, encode_images, encode_texts, load_model_and_processor, model_device
from .errors import IndexFormatError
from .storage import FAISS_FILE, ITEMS_FILE, ChunkStore, read_manifest


__all__ = ["SearchHit", "VLPIndex"]


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
        self._store = ChunkStore(index_dir, table)
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
            check_fingerprint(manifest["model"]["fingerprint"], model, processor, str(index_dir))
        faiss_index = faiss.read_index(str(index_dir / FAISS_FILE))
        apply_search_params(faiss_index, manifest["faiss"].get("search", {}))
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
        apply_search_params(self.faiss_index, {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v})

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
        from ..models import RetrievalEmbeddings

        device = model_device(self.model)
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
        from ..models import FusionRetrievalEmbeddings
        from ..retrieval import rerank_topk

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
