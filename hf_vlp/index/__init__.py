"""A searchable image (or caption) index on faiss: the on-disk format, its writer and `VLPIndex` search.

Why faiss: a gallery of millions of items does not fit the in-memory chunked top-k of `hf_vlp.retrieval` (that is
an exact scan, fine for an eval gallery); faiss gives exact (`IndexFlatIP`) and approximate (IVF-PQ, HNSW) inner-
product search that users already deploy. This package owns the index *format* and *search*; building it from data
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

Modules: `storage` (the format: shards, items table, manifest), `backends` (faiss index building and search
parameters), `encoding` (the model: loading, encoding, the embedding-space fingerprint), `search` (`VLPIndex`),
`errors`; everything public is importable from `hf_vlp.index`.
"""

from .backends import AUTO_APPROXIMATE_THRESHOLD, make_faiss_index
from .encoding import embedding_fingerprint, encode_images, encode_texts, load_model_and_processor
from .errors import IndexFormatError, IndexModelMismatchError
from .search import SearchHit, VLPIndex
from .storage import (
    CHUNKS_DIR,
    FAISS_FILE,
    INDEX_FORMAT_VERSION,
    ITEMS_FILE,
    MANIFEST_FILE,
    TRAIN_ROWS_FILE,
    chunk_names,
    finalize_index,
    read_manifest,
    write_chunk,
)


__all__ = [
    "AUTO_APPROXIMATE_THRESHOLD",
    "CHUNKS_DIR",
    "FAISS_FILE",
    "INDEX_FORMAT_VERSION",
    "ITEMS_FILE",
    "IndexFormatError",
    "IndexModelMismatchError",
    "MANIFEST_FILE",
    "SearchHit",
    "TRAIN_ROWS_FILE",
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
