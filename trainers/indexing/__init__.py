"""Build an hf-vlp search index from a data source (the job behind `hf-vlp index build` / `merge`).

The index format and its search live in `hf_vlp.index` (the model side, loadable by a Space or a service); this package
is the data side of it: the `trainers.data` readers (image folders, JSONL/CSV/parquet lists, tar shards, `datasets`
datasets; `sources`), image decoding in worker processes and batched encoding, corrupt images counted and skipped
(`encoding`), and a build that survives being killed (`build`).

Resumable by construction: the input (in the readers' deterministic order) is cut into chunks of `chunk_size` items;
a chunk's embeddings are written atomically (`hf_vlp.index.write_chunk`), so after a kill the next run skips the
chunks that exist and recomputes only the rest, batch for batch as the first run would have, and ends with the same
index. Several processes share the work by input row (`row % num_shards == shard_index`, or torchrun's
`RANK`/`WORLD_SIZE`); each marks its part done, and the merge (`finalize`, run by the single process, rank 0, or
`hf-vlp index merge`) orders the items by input row, so every way of building one input gives the same index.
"""

from .build import IndexBuildResult, build_index, merge_index
from .sources import IMAGE_EXTENSIONS, IndexSource


__all__ = ["IMAGE_EXTENSIONS", "IndexBuildResult", "IndexSource", "build_index", "merge_index"]
