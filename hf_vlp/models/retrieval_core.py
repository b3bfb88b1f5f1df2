"""The one retrieval core: embeddings, block-wise top-k, variable-length gathering, score combining, and the
model contract every layer relies on.

Shipped with saved models (Hub custom code): imports torch and transformers only. It lives in the flat model
folder so that the models themselves (`FusionEncoderForRetrieval.rank`, the contrastive losses) use it; the
model-side library (`hf_vlp.retrieval`), the training side (`trainers.evaluation`, `trainers.grad_cache`), the
Space and the benchmarks import it from here instead of keeping copies.

- [`RetrievalEmbeddings`]: what a gallery keeps per item, with `select` / `cat` / `pad` / `gather`. The
  same operations exist as functions (`select_embeddings` ...) that work on *any* `ModelOutput` of tensors, so
  code handed a model loaded with `trust_remote_code` (whose output class comes from the model's own folder)
  uses them too.
- [`blockwise_topk`]: a running top-k over gallery blocks scored by a callback, with a fixed tie order.
- [`gather_varlen`]: concatenate a tensor over processes when each holds a different shape (with or without
  gradient).
- [`parse_combine`] / [`combine_scores`]: the one rule set for mixing cross-encoder and contrastive scores, and
  [`rerank_topk`], the two-stage re-ranking built on it.
- [`RetrievalModel`] / [`RerankingModel`]: the model contract as `typing.Protocol`s (checked with `isinstance`,
  or `implementation_of` to look through wrappers such as PEFT's).

Tie order everywhere: results are ordered by `(score descending, gallery index ascending)`, i.e. what a stable
descending sort of the full score row returns, whatever the block sizes.

This module stays one file of a little over 450 lines because it is the one contract every layer imports by this
one path (ARCHITECTURE.md), and its parts share the embedding type and the tie order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers.utils import ModelOutput


__all__ = [
    "COMBINE_MODES",
    "CombineMode",
    "RerankingModel",
    "RetrievalEmbeddings",
    "RetrievalModel",
    "blockwise_topk",
    "cat_embeddings",
    "combine_scores",
    "distributed_rank_and_world",
    "gather_contrastive_batch",
    "gather_embeddings",
    "gather_varlen",
    "implementation_of",
    "pad_embeddings",
    "parse_combine",
    "rank_offset",
    "rerank_topk",
    "select_embeddings",
    "tensor_fields",
]

CombineMode = Literal["cross", "sum"] | float
#: Named ways to form a re-ranked score from the cross score `c` and the contrastive score `s`: `"cross"` -> `c`
#: (the ALBEF repository), `"sum"` -> `c + s` (LAVIS ALBEF/BLIP); a float weight `w` in [0, 1] gives
#: `w * c + (1 - w) * s`.
COMBINE_MODES = ("cross", "sum")

Output = TypeVar("Output", bound=ModelOutput)
P = TypeVar("P")


# ---------------------------------------------------------------------------------------------------- processes
def distributed_rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_varlen(
    tensor: torch.Tensor, group: dist.ProcessGroup | None = None, with_grad: bool = False
) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0 when each process may hold a different shape.

    Why: the last batch of an epoch is smaller, texts are padded to the longest of each batch, and evaluation
    shards need not be even; `torch.distributed.all_gather` wants equal shapes. The shapes are exchanged
    first, every tensor is zero-padded to the largest size in each dim, gathered, and dim 0 is trimmed back;
    padding in later dims stays (zero = padding in token masks, so a mask field masks it).

    Args:
        tensor: `[n_rank, ...]` with the same number of dims and the same dtype on every process (CUDA tensors
            for NCCL, CPU for gloo).
        group: process group; `None` is the default group.
        with_grad: keep the autograd graph (`torch.distributed.nn.all_gather`, whose backward sums the
            gradients each rank's loss sends to this rank's slice: with DDP's averaging, the update of the
            one-process run on the concatenated batch, as open_clip's `gather_with_grad`). Without it the
            result is detached (evaluation).

    Returns:
        `[sum(n_rank), ...]` in rank order; `tensor` itself when not distributed or on a single process. A
        collective: every process must call it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return tensor
    world = dist.get_world_size(group)
    local = tensor if with_grad else tensor.detach()
    local_shape = torch.tensor(local.shape, dtype=torch.long, device=local.device)
    shapes = [torch.zeros_like(local_shape) for _ in range(world)]
    dist.all_gather(shapes, local_shape, group=group)
    max_shape = torch.stack(shapes).amax(dim=0).tolist()
    local = _pad_to(local, max_shape, first_dim=0).contiguous()
    if with_grad:
        from torch.distributed.nn import all_gather as all_gather_with_grad

        gathered = all_gather_with_grad(local, **({} if group is None else {"group": group}))
    else:
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
    return torch.cat([part[: int(shape[0])] for part, shape in zip(gathered, shapes)], dim=0)


def rank_offset(local_batch: int, device: torch.device) -> int:
    """Index of this rank's first item in a batch gathered with `gather_varlen` (0 on one process)."""
    rank, world = distributed_rank_and_world()
    if world == 1:
        return 0
    sizes = gather_varlen(torch.tensor([local_batch], device=device))
    return int(sizes[:rank].sum())


# ---------------------------------------------------------------------------------------------------- embeddings
def _pad_to(tensor: torch.Tensor, shape: Sequence[int], first_dim: int = 1) -> torch.Tensor:
    """Zero-pad dims `first_dim..` of `tensor` up to `shape` (a no-op when they already match)."""
    padding = []
    for dim in reversed(range(first_dim, tensor.dim())):
        padding += [0, int(shape[dim]) - tensor.shape[dim]]
    return F.pad(tensor, padding) if any(padding) else tensor


def tensor_fields(output: ModelOutput) -> dict[str, torch.Tensor]:
    """The tensor fields of a model output, by name (unset fields are absent)."""
    return {name: value for name, value in output.items() if isinstance(value, torch.Tensor)}


def select_embeddings(output: Output, index: torch.Tensor | slice | Sequence[int]) -> Output:
    """The items at `index` (any index valid on dim 0) of every tensor field, in the output's own class."""
    return type(output)(**{name: value[index] for name, value in tensor_fields(output).items()})


def pad_embeddings(output: Output, shapes: Mapping[str, Sequence[int]]) -> Output:
    """Every field zero-padded after dim 0 to `shapes[name]` (fields not named stay as they are)."""
    return type(output)(
        **{
            name: _pad_to(value, shapes[name]) if name in shapes else value
            for name, value in tensor_fields(output).items()
        }
    )


def cat_embeddings(outputs: Sequence[Output]) -> Output:
    """Concatenate batches along dim 0 into one gallery, in the first output's class.

    Token dims are zero-padded to the longest (mask 0 there), because texts are padded per batch.
    """
    if not outputs:
        raise ValueError("nothing to concatenate")
    parts = [tensor_fields(output) for output in outputs]
    shapes = {
        name: [max(part[name].shape[dim] for part in parts) for dim in range(value.dim())]
        for name, value in parts[0].items()
    }
    fields = {name: torch.cat([_pad_to(part[name], shapes[name]) for part in parts]) for name in parts[0]}
    return type(outputs[0])(**fields)


def gather_embeddings(output: Output, with_grad: bool = False) -> Output:
    """Every process's items concatenated in rank order (each field by `gather_varlen`), on every process."""
    return type(output)(
        **{name: gather_varlen(value, with_grad=with_grad) for name, value in tensor_fields(output).items()}
    )


@dataclass
class RetrievalEmbeddings(ModelOutput):
    """What a gallery stores per item to be scored later against queries.

    Args:
        embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): L2-normalised global embedding.
        token_embeds (`torch.FloatTensor` of shape `(batch, tokens, projection_dim)`, *optional*):
            L2-normalised (and possibly reduced) token embeddings, only for token-wise similarity.
        token_mask (`torch.LongTensor` of shape `(batch, tokens)`, *optional*): 1 for real tokens.
    """

    embeds: torch.FloatTensor | None = None
    token_embeds: torch.FloatTensor | None = None
    token_mask: torch.LongTensor | None = None

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> RetrievalEmbeddings:
        """The items at `index` (any index valid on dim 0), e.g. the top-k candidates of a query."""
        return select_embeddings(self, index)

    def pad(self, shapes: Mapping[str, Sequence[int]]) -> RetrievalEmbeddings:
        """Fields zero-padded after dim 0 to `shapes[name]` (see `pad_embeddings`)."""
        return pad_embeddings(self, shapes)

    def gather(self, with_grad: bool = False) -> RetrievalEmbeddings:
        """Every process's items, in rank order (see `gather_embeddings`)."""
        return gather_embeddings(self, with_grad=with_grad)

    @classmethod
    def cat(cls, items: Sequence[RetrievalEmbeddings]) -> RetrievalEmbeddings:
        """Concatenate batches into one gallery, token dims zero-padded to the longest (see `cat_embeddings`)."""
        return cat_embeddings(items)


def gather_contrastive_batch(
    image: Output, text: Output, image_ids: torch.Tensor | None, enabled: bool = True
) -> tuple[Output, Output, int, torch.Tensor | None]:
    """The keys of an in-batch contrastive loss: `(all_images, all_texts, offset, all_image_ids)`.

    Under `torch.distributed` (and `enabled`), every rank's embeddings gathered with gradient, this rank's
    offset in them and the gathered ids; otherwise the local batch itself with offset 0.
    """
    _, world = distributed_rank_and_world()
    if world == 1 or not enabled:
        return image, text, 0, image_ids
    all_images, all_texts = gather_embeddings(image, with_grad=True), gather_embeddings(text, with_grad=True)
    local = next(iter(tensor_fields(image).values()))
    offset = rank_offset(local.shape[0], local.device)
    all_ids = gather_varlen(image_ids, with_grad=True) if image_ids is not None else None
    return all_images, all_texts, offset, all_ids


# ---------------------------------------------------------------------------------------------------- top-k
def _order_by_score_then_index(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-order each row of `(vals, idx)` by `(vals descending, idx ascending)` (two stable sorts)."""
    idx, perm = idx.sort(dim=1, stable=True)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, descending=True, stable=True)
    return vals, idx.gather(1, perm)


def _block_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` of each row of `sims` [q, n] with the documented tie order; returns (values, column indices).

    `torch.topk` leaves the choice among tied values unspecified. We ask it for `k + 1` values: a tie straddles
    the k-th place exactly when the (k+1)-th value equals the k-th one. Only those (rare) rows are redone so
    that the *lowest* tied column indices are kept; the kept entries are then ordered by (score desc, index
    asc). The extra cost on tie-free data is one more element per row of `topk`.
    """
    n = sims.shape[1]
    if k >= n:
        return sims.sort(dim=1, descending=True, stable=True)
    vals, idx = sims.topk(k + 1, dim=1, largest=True, sorted=True)
    straddle = vals[:, k] == vals[:, k - 1]
    vals, idx = vals[:, :k], idx[:, :k]
    if bool(straddle.any()):
        rows = straddle.nonzero().squeeze(1)
        sub = sims.index_select(0, rows)
        thr = vals.index_select(0, rows)[:, k - 1 : k]
        pos = torch.arange(n, device=sims.device).expand_as(sub)
        # key: -1 for values above the threshold (always kept), the column for ties, n (never kept) otherwise;
        # the k smallest keys are all the values above the threshold plus the lowest-index ties.
        key = torch.where(sub > thr, -1, torch.where(sub == thr, pos, n))
        sub_idx = key.topk(k, dim=1, largest=False).indices
        idx = idx.index_copy(0, rows, sub_idx)
        vals = vals.index_copy(0, rows, sub.gather(1, sub_idx))
    return _order_by_score_then_index(vals, idx)


def blockwise_topk(
    score_fn: Callable[[int, int], torch.Tensor], num_gallery: int, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` gallery items per query without holding more than one block of scores.

    Args:
        score_fn: `score_fn(start, stop) -> [Q, stop - start]` scores of the queries against gallery rows
            `start..stop` (a matrix product, a token-wise similarity, ...). The returned tensor may be a reused
            buffer: it is reduced to its top-k before the next call.
        num_gallery: number of gallery items (>= 1).
        k: results per query (>= 1), clipped to `num_gallery`.
        chunk_size: gallery rows per block.

    Returns:
        `(scores, indices)`, both `[Q, min(k, num_gallery)]`, sorted by `(score descending, gallery index
        ascending)`: the stable descending sort of the full score rows cut at `k`, whatever `chunk_size` is.
        Scores merge in float32 (float64 scores stay float64).
    """
    if num_gallery < 1 or k < 1 or chunk_size < 1:
        raise ValueError(f"num_gallery, k and chunk_size must be >= 1, got {num_gallery}, {k}, {chunk_size}")
    k = min(k, num_gallery)
    best_vals: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, num_gallery, chunk_size):
        stop = min(start + chunk_size, num_gallery)
        scores = score_fn(start, stop)
        vals, idx = _block_topk(scores, min(k, stop - start))
        vals = vals.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
        idx = idx + start
        if best_vals is None or best_idx is None:
            best_vals, best_idx = vals, idx
            continue
        # Running candidates come first and all have lower gallery indices than this block's, and both halves
        # are already in (score desc, index asc) order, so one stable sort keeps the tie order.
        cat_vals, perm = torch.cat([best_vals, vals], dim=1).sort(dim=1, descending=True, stable=True)
        best_vals = cat_vals[:, :k]
        best_idx = torch.cat([best_idx, idx], dim=1).gather(1, perm[:, :k])
    return best_vals, best_idx


# ---------------------------------------------------------------------------------------------------- re-ranking
def parse_combine(value: str | float) -> CombineMode:
    """A re-rank combine mode checked against the one rule set: `"cross"`, `"sum"`, or a weight in [0, 1].

    A weight may come as a string (`"0.7"`, from a command line). Raises `ValueError` for anything else
    (`TypeError` for a value that is neither a string nor a number).
    """
    if isinstance(value, str):
        if value in COMBINE_MODES:
            return value
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"combine must be one of {COMBINE_MODES} or a weight in [0, 1], got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        weight = float(value)
    else:
        raise TypeError(f"combine must be one of {COMBINE_MODES} or a weight in [0, 1], got {type(value).__name__}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"combine weight must be in [0, 1], got {weight}")
    return weight


def combine_scores(cross: torch.Tensor, contrastive: torch.Tensor, combine: str | float) -> torch.Tensor:
    """The re-ranked score from the cross-encoder score `cross` and the first-stage score `contrastive`.

    `"cross"` -> `cross`, `"sum"` -> `cross + contrastive`, a weight `w` -> `w * cross + (1 - w) * contrastive`
    (checked by `parse_combine`).
    """
    combine = parse_combine(combine)
    if combine == "cross":
        return cross
    if combine == "sum":
        return cross + contrastive
    return combine * cross + (1.0 - combine) * contrastive


def rerank_topk(
    query_indices: torch.Tensor | None,
    candidate_indices: torch.Tensor,
    candidate_scores: torch.Tensor,
    pair_scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    combine: str | float = "cross",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score each query's contrastive top-k with a pair scorer (e.g. a cross encoder's ITM logit) and re-sort.

    Why: fusion models (ALBEF, BLIP, R2D2) rank the whole gallery with the cheap contrastive similarity, then
    run the expensive cross encoder only on the `k` best candidates per query. This helper does the batching
    and the score combination and knows nothing about the model: `pair_scorer(q_idx, c_idx)` receives two 1-D
    int64 tensors of the same length `B <= batch_size` (global query index and candidate gallery index of each
    pair) and must return `B` scores, higher = better match. It runs under `torch.no_grad()`. Pairs are
    visited query by query (row-major), so a batch holds consecutive candidates of the same query. For the
    text-to-image direction pass a scorer that swaps its arguments (`lambda t, i: itm(i, t)`).

    Args:
        query_indices: `[Q]` global index of each query row (e.g. the image id when re-ranking image-to-text on
            one rank's shard of the rows); `None` means `arange(Q)`.
        candidate_indices: `[Q, k]` gallery indices from the first stage (e.g. `blockwise_topk`).
        candidate_scores: `[Q, k]` first-stage (contrastive) scores of those candidates.
        pair_scorer: callable `(q_idx [B], c_idx [B]) -> scores [B]`.
        combine: see `combine_scores` (`"cross"`, `"sum"` or a weight in [0, 1]).
        batch_size: pairs per `pair_scorer` call.

    Returns:
        `(scores, indices)`, both `[Q, k]`: the combined float32 scores sorted descending within each row and
        the candidate indices permuted accordingly. Equal combined scores keep their first-stage order (stable
        sort).
    """
    if candidate_indices.dim() != 2 or candidate_indices.shape != candidate_scores.shape:
        raise ValueError(
            f"candidate_indices and candidate_scores must both be [Q, k], got {tuple(candidate_indices.shape)} "
            f"and {tuple(candidate_scores.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    combine = parse_combine(combine)

    num_queries, k = candidate_indices.shape
    device = candidate_indices.device
    if query_indices is None:
        query_indices = torch.arange(num_queries, device=device)
    query_indices = torch.as_tensor(query_indices, device=device).long()
    if query_indices.shape != (num_queries,):
        raise ValueError(f"query_indices must be [Q]={num_queries}, got {tuple(query_indices.shape)}")

    flat_q = query_indices[:, None].expand(num_queries, k).reshape(-1)
    flat_c = candidate_indices.reshape(-1).long()
    cross = torch.empty(flat_c.shape[0], dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, flat_c.shape[0], batch_size):
            stop = min(start + batch_size, flat_c.shape[0])
            out = torch.as_tensor(pair_scorer(flat_q[start:stop], flat_c[start:stop]))
            if out.shape != (stop - start,):
                raise ValueError(f"pair_scorer must return {stop - start} scores, got shape {tuple(out.shape)}")
            cross[start:stop] = out.to(device=device, dtype=torch.float32)
    combined = combine_scores(cross.view(num_queries, k), candidate_scores.to(torch.float32), combine)
    combined, perm = combined.sort(dim=1, descending=True, stable=True)
    return combined, candidate_indices.gather(1, perm)


# ---------------------------------------------------------------------------------------------------- contract
@runtime_checkable
class RetrievalModel(Protocol):
    """What every hf-vlp model offers for retrieval, and all that evaluation, search and the Space rely on.

    `encode_image` / `encode_text` return what a gallery stores (a `RetrievalEmbeddings` or a subclass);
    `similarity(image, text)` scores every image against every text, unscaled, as `(sim_i2t, sim_t2i)`, both
    `(images, texts)` (the two differ only for token-wise similarity); `get_logit_scale()` is the temperature.
    """

    def encode_image(self, pixel_values: torch.Tensor, **kwargs) -> RetrievalEmbeddings: ...

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> RetrievalEmbeddings: ...

    def similarity(
        self, image: RetrievalEmbeddings, text: RetrievalEmbeddings
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def get_logit_scale(self) -> torch.Tensor: ...


@runtime_checkable
class RerankingModel(RetrievalModel, Protocol):
    """A retrieval model with a second stage: `rerank_scores(image, text)` scores aligned pairs (image[i],
    text[i]) of encoded items, higher = better match (a side of one item is broadcast to the other's length).

    `implementation_of(model, RerankingModel)` is how callers decide whether to re-rank.
    """

    def rerank_scores(self, image: RetrievalEmbeddings, text: RetrievalEmbeddings) -> torch.Tensor: ...


def implementation_of(model: object, protocol: type[P]) -> P | None:
    """`model` when it implements `protocol`, else the model a wrapper holds (PEFT's `get_base_model()`) when
    that one does, else None: how callers decide, e.g., whether to re-rank (`RerankingModel`).

    Protocol checks read the class on Python >= 3.12, so a wrapper that forwards attributes dynamically is looked
    through explicitly.
    """
    if isinstance(model, protocol):
        return model
    get_base_model = getattr(type(model), "get_base_model", None)
    base = get_base_model(model) if callable(get_base_model) else None
    return base if base is not None and isinstance(base, protocol) else None
