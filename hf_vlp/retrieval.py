"""Model-agnostic retrieval utilities: chunked top-k search, two-stage re-ranking and recall metrics.

Everything here works on plain tensors (embeddings, similarity scores, index lists), so the same code
serves every model family in the package: a dual encoder only needs :func:`chunked_topk` and
:func:`retrieval_recall_from_topk`; a fusion encoder (ALBEF / R2D2 / BLIP style) adds the cross-encoder
re-ranking of the contrastive top-k with :func:`rerank_topk` and reports the usual ALBEF ``itm_eval``
numbers with :func:`dense_from_topk` + :func:`retrieval_recall`.

Only ``torch`` and the retrieval core (``hf_vlp.models.retrieval_core``, shipped with every model: block-wise
top-k, re-ranking, score combining, the variable-length gather, re-exported here) are imported, never
``trainers``, so the module can be used at inference time and from the training side alike.

Conventions shared by every function:

* Scores are "higher is more similar" (cosine similarity, logits, ITM logits ...).
* **Tie order.** Search results are ordered by ``(score descending, gallery index ascending)``: among equal
  scores the lower gallery index comes first, and at the k-th place the lower indices are the ones kept.
  This is what a *stable* descending sort of the full score row returns, and it does not depend on the
  chunk sizes.
* **Ties in metrics are pessimistic.** A ground-truth item ranks *behind* every non-ground-truth item with
  the same score, so a constant-score model gets 0 recall instead of whatever the storage order gives,
  and a ground truth left at the ``-inf`` / ``-100`` fill of a two-stage score matrix never counts as
  found just because it ties with the other unranked entries.
* Metrics are percentages (0-100), like papers report them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .models.retrieval_core import blockwise_topk, combine_scores, gather_varlen, parse_combine, rerank_topk


__all__ = [
    "blockwise_topk",
    "chunked_topk",
    "combine_scores",
    "dense_from_topk",
    "gather_for_eval",
    "gather_varlen",
    "parse_combine",
    "rerank_topk",
    "retrieval_recall",
    "retrieval_recall_from_topk",
    "zero_shot_accuracy",
]


# ----------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------


def chunked_topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    chunk_size: int = 16384,
    query_chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items for every query by inner product, without materialising the full score matrix.

    Why: evaluating retrieval on a large gallery (or serving a search index) needs ``topk(queries @ gallery.T)``,
    but the ``[Q, N]`` score matrix is 4 GB for 1,000 queries x 1M items in float32. Here the gallery is
    scanned in blocks of ``chunk_size`` rows and the queries in blocks of ``query_chunk_size`` rows: each block
    of scores is reduced to its top-k at once and merged into a running top-k, so the extra memory is one
    ``[query_chunk_size, chunk_size]`` score buffer (plus a few ``[query_chunk_size, 2k]`` tensors), whatever
    ``N`` is. Normalise the embeddings first if you want cosine similarity.

    Args:
        queries: ``[Q, D]`` floating tensor.
        gallery: ``[N, D]`` floating tensor, same dtype and device as ``queries``.
        k: number of results per query; clipped to ``N`` (so the output has ``min(k, N)`` columns).
        chunk_size: gallery rows per block. The default (a 64 MiB float32 buffer with 1024 queries) was the
            fastest on CPU in ``benchmarks/bench_search.py`` (8k-16k beat 64k by ~8%: the block is still partly
            in cache when ``topk`` reads it); on a GPU larger blocks (65536+) cut kernel launches.
        query_chunk_size: query rows per block.

    Returns:
        ``(scores, indices)``, both ``[Q, min(k, N)]``: ``scores`` in float32, ``indices`` (int64, into
        ``gallery``) sorted by score descending. The scores of a block are computed in the input dtype (the
        matmul runs in float16/bfloat16 for such inputs) and the merge runs in float32, which is exact for
        every input float dtype up to float32 (float64 scores are kept in float64).

    Result and ties: the same as ``torch.sort(queries @ gallery.T, dim=1, descending=True, stable=True)`` cut at
    ``k``, i.e. ties are broken by the lower gallery index, both for the order and for which tied items make
    the cut; ``torch.topk`` on the full matrix agrees wherever there is no tie (its tie order is unspecified).
    The only possible difference to the full product is floating-point: a BLAS may round a ``[q, chunk]`` product
    differently in the last bit than a ``[Q, N]`` one, which can only swap items whose scores agree to ~1 ulp.
    NaN scores give an unspecified order. Works on any device (everything stays on ``queries.device``).
    """
    if queries.dim() != 2 or gallery.dim() != 2:
        raise ValueError(f"queries and gallery must be 2-D, got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"embedding sizes differ: queries D={queries.shape[1]}, gallery D={gallery.shape[1]}")
    if not queries.is_floating_point() or queries.dtype != gallery.dtype:
        raise TypeError(f"queries and gallery must share a floating dtype, got {queries.dtype} and {gallery.dtype}")
    if queries.device != gallery.device:
        raise ValueError(f"queries on {queries.device} but gallery on {gallery.device}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ValueError("chunk_size and query_chunk_size must be >= 1")

    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    k = min(k, num_gallery)
    device = queries.device
    merge_dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
    out_scores = torch.empty(num_queries, k, dtype=merge_dtype, device=device)
    out_indices = torch.empty(num_queries, k, dtype=torch.long, device=device)
    if k == 0 or num_queries == 0:
        return out_scores, out_indices

    chunk_size = min(chunk_size, num_gallery)
    query_chunk_size = min(query_chunk_size, num_queries)
    # One flat buffer reused for every block: no allocator traffic (and no fresh page faults) per block.
    buffer = torch.empty(query_chunk_size * chunk_size, dtype=queries.dtype, device=device)
    with torch.no_grad():
        for q_start in range(0, num_queries, query_chunk_size):
            q_block = queries[q_start : q_start + query_chunk_size]

            def scores(start: int, stop: int, q_block: torch.Tensor = q_block) -> torch.Tensor:
                sims = buffer[: q_block.shape[0] * (stop - start)].view(q_block.shape[0], stop - start)
                return torch.mm(q_block, gallery[start:stop].T, out=sims)

            best_vals, best_idx = blockwise_topk(scores, num_gallery, k, chunk_size)
            out_scores[q_start : q_start + q_block.shape[0]] = best_vals
            out_indices[q_start : q_start + q_block.shape[0]] = best_idx
    return out_scores, out_indices


# ----------------------------------------------------------------------------------------------------------
# Two-stage re-ranking (`rerank_topk`, `combine_scores`: in the retrieval core, re-exported here)
# ----------------------------------------------------------------------------------------------------------


def dense_from_topk(
    indices: torch.Tensor, scores: torch.Tensor, num_gallery: int, fill: float = float("-inf")
) -> torch.Tensor:
    """Scatter per-query top-k results into a dense ``[Q, num_gallery]`` score matrix, ``fill`` elsewhere.

    Why: ALBEF / LAVIS evaluation writes the re-ranked scores into a full score matrix whose other entries are
    ``-100`` and hands it to ``itm_eval``; this builds that matrix (use ``fill=-100.0`` to mirror it exactly) for
    :func:`retrieval_recall` or for ``all_reduce``-style merging of row shards. Only for moderate galleries: for
    large ones use :func:`retrieval_recall_from_topk`, which never builds the matrix.

    Args:
        indices: ``[Q, k]`` gallery indices (distinct within a row).
        scores: ``[Q, k]`` their scores.
        num_gallery: number of gallery columns.
        fill: value of the entries that are not in a row's top-k.

    Returns:
        ``[Q, num_gallery]`` tensor with the dtype of ``scores`` (float32 for non-float scores).
    """
    if indices.dim() != 2 or indices.shape != scores.shape:
        raise ValueError(f"indices and scores must both be [Q, k], got {tuple(indices.shape)}, {tuple(scores.shape)}")
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    dense = torch.full((indices.shape[0], num_gallery), fill, dtype=dtype, device=scores.device)
    return dense.scatter_(1, indices.long().to(scores.device), scores.to(dtype))


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def _as_lists(ground_truth: Sequence[int] | Sequence[Sequence[int]], name: str) -> list[list[int]]:
    """Normalise ``[gt, ...]`` or ``[[gt, ...], ...]`` (also tensors / arrays) to a list of non-empty lists."""
    out: list[list[int]] = []
    for row, item in enumerate(ground_truth):
        if isinstance(item, torch.Tensor):
            item = item.tolist()
        try:
            items = [operator.index(item)]
        except TypeError:
            items = [operator.index(x) for x in item]
        if not items:
            raise ValueError(f"{name}[{row}] has no ground truth")
        out.append(items)
    return out


def _check_range(gt: list[list[int]], num_gallery: int, name: str) -> None:
    for row, items in enumerate(gt):
        for item in items:
            if not 0 <= item < num_gallery:
                raise ValueError(f"{name}[{row}] contains {item}, outside the gallery [0, {num_gallery})")


def _dense_ranks(sim: torch.Tensor, gt: list[list[int]], row_chunk: int = 1024) -> torch.Tensor:
    """0-based rank of the best ground truth of every row of ``sim``, ties counted pessimistically.

    rank = number of non-ground-truth entries scoring ``>=`` the best ground-truth score of the row.
    """
    num_rows, num_cols = sim.shape
    ranks = torch.empty(num_rows, dtype=torch.long)
    for start in range(0, num_rows, row_chunk):
        block = sim[start : start + row_chunk]
        rows = [r for r, items in enumerate(gt[start : start + block.shape[0]]) for _ in items]
        cols = [c for items in gt[start : start + block.shape[0]] for c in items]
        mask = torch.zeros(block.shape, dtype=torch.bool, device=block.device)
        mask[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = True
        best = torch.where(mask, block, torch.full_like(block, float("-inf"))).amax(dim=1, keepdim=True)
        ranks[start : start + block.shape[0]] = ((block >= best) & ~mask).sum(dim=1).cpu()
    return ranks


def _topk_ranks(
    topk_indices: torch.Tensor, gt: list[list[int]], topk_scores: torch.Tensor | None, row_chunk: int = 4096
) -> torch.Tensor:
    """0-based rank of the best ground truth inside each row's top-k list; ``k`` when none is listed."""
    num_rows, k = topk_indices.shape
    ranks = torch.empty(num_rows, dtype=torch.long)
    max_gt = max((len(items) for items in gt), default=1)
    for start in range(0, num_rows, row_chunk):
        idx = topk_indices[start : start + row_chunk].long().cpu()
        rows = gt[start : start + idx.shape[0]]
        padded = torch.full((idx.shape[0], max_gt), -1, dtype=torch.long)
        for r, items in enumerate(rows):
            padded[r, : len(items)] = torch.tensor(items, dtype=torch.long)
        is_gt = (idx[:, :, None] == padded[:, None, :]).any(dim=2)  # [rows, k]
        found = is_gt.any(dim=1)
        if topk_scores is None:
            rank = is_gt.long().argmax(dim=1)  # first listed ground truth
        else:
            scores = topk_scores[start : start + idx.shape[0]].detach().cpu().to(torch.float64)
            best = torch.where(is_gt, scores, torch.full_like(scores, float("-inf"))).amax(dim=1, keepdim=True)
            rank = ((scores >= best) & ~is_gt).sum(dim=1)
        ranks[start : start + idx.shape[0]] = torch.where(found, rank, torch.full_like(rank, k))
    return ranks


def _recall_dict(ranks_i2t: torch.Tensor, ranks_t2i: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    result: dict[str, float] = {}
    for prefix, ranks in (("i2t", ranks_i2t), ("t2i", ranks_t2i)):
        values = [100.0 * (ranks < k).double().mean().item() if ranks.numel() else 0.0 for k in ks]
        for k, value in zip(ks, values):
            result[f"{prefix}_R@{k}"] = value
        result[f"{prefix}_mean"] = sum(values) / len(values)
    result["mean_recall"] = (result["i2t_mean"] + result["t2i_mean"]) / 2
    return result


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    return ks


def retrieval_recall(
    sim_i2t: torch.Tensor,
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int] | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
    *,
    sim_t2i: torch.Tensor | None = None,
) -> dict[str, float]:
    """Image-text retrieval Recall@K in both directions from dense score matrices (ALBEF ``itm_eval``).

    Why: the standard COCO / Flickr30K-CN / MUGE retrieval numbers. Image-to-text (TR@K in ALBEF) uses, for each
    image, the best-ranked of its ground-truth captions, so an image whose *second* caption comes first is an
    R@1 hit; text-to-image (IR@K) uses the rank of the caption's image (or the best of several images).

    Args:
        sim_i2t: ``[num_images, num_texts]`` scores, higher = better. May be a two-stage matrix whose
            non-re-ranked entries are ``-inf`` or ``-100`` (see :func:`dense_from_topk`).
        img2txt: for every image, the list of its ground-truth text indices.
        txt2img: for every text, its ground-truth image index (or a list of image indices).
        ks: the cut-offs K.
        sim_t2i: optional ``[num_texts, num_images]`` scores for the text-to-image direction; defaults to
            ``sim_i2t.T``. Two-stage evaluation re-ranks each direction separately and so has two matrices.

    Returns:
        ``{"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", ..., "i2t_mean", "t2i_mean", "mean_recall"}`` in percent;
        ``*_mean`` averages one direction's R@K and ``mean_recall`` all of them (ALBEF ``txt_r_mean``,
        ``img_r_mean``, ``r_mean``).

    Ties are pessimistic: a ground truth ranks behind every non-ground-truth item with an equal score (so a
    ground truth left at the ``-inf`` / ``-100`` fill never counts). ALBEF's ``np.argsort`` leaves the order
    of ties to the sort algorithm; on tie-free scores both agree. NaN scores raise ``ValueError``.
    """
    ks = _check_ks(ks)
    if sim_i2t.dim() != 2:
        raise ValueError(f"sim_i2t must be [num_images, num_texts], got {tuple(sim_i2t.shape)}")
    num_images, num_texts = sim_i2t.shape
    if sim_t2i is None:
        sim_t2i = sim_i2t.T
    if sim_t2i.shape != (num_texts, num_images):
        raise ValueError(
            f"sim_t2i must be [num_texts, num_images]={num_texts, num_images}, got {tuple(sim_t2i.shape)}"
        )
    gt_i2t = _as_lists(img2txt, "img2txt")
    gt_t2i = _as_lists(txt2img, "txt2img")
    if len(gt_i2t) != num_images or len(gt_t2i) != num_texts:
        raise ValueError(
            f"got {len(gt_i2t)} img2txt rows and {len(gt_t2i)} txt2img rows for a {num_images}x{num_texts} matrix"
        )
    _check_range(gt_i2t, num_texts, "img2txt")
    _check_range(gt_t2i, num_images, "txt2img")
    for name, sim in (("sim_i2t", sim_i2t), ("sim_t2i", sim_t2i)):
        if sim.is_floating_point() and bool(torch.isnan(sim).any()):
            raise ValueError(f"{name} contains NaN")
    return _recall_dict(_dense_ranks(sim_i2t, gt_i2t), _dense_ranks(sim_t2i, gt_t2i), ks)


def retrieval_recall_from_topk(
    topk_indices_i2t: torch.Tensor,
    topk_indices_t2i: torch.Tensor,
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int] | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
    *,
    topk_scores_i2t: torch.Tensor | None = None,
    topk_scores_t2i: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@K from per-query ranked top-k index lists, so huge galleries never need a dense score matrix.

    Why: with :func:`chunked_topk` (and optionally :func:`rerank_topk`) a 1M-item gallery is evaluated with
    ``[Q, k]`` tensors only. Same definitions and keys as :func:`retrieval_recall`.

    Args:
        topk_indices_i2t: ``[num_images, k1]`` text indices per image, best first; ``k1 >= max(ks)``.
        topk_indices_t2i: ``[num_texts, k2]`` image indices per text, best first; ``k2 >= max(ks)``.
        img2txt: for every image, its ground-truth text indices.
        txt2img: for every text, its ground-truth image index (or list of indices).
        ks: the cut-offs K.
        topk_scores_i2t, topk_scores_t2i: optional scores of the listed items. Without them the list order is
            trusted as is (:func:`chunked_topk` puts lower gallery indices first among ties). With them, ties
            inside the list count pessimistically as in :func:`retrieval_recall`.

    Returns:
        The same dict as :func:`retrieval_recall`, in percent. A query whose ground truth is not listed is a
        miss for every K. On scores without ties involving a ground truth this equals :func:`retrieval_recall`
        on the dense matrix; with scores given it also agrees on ties inside the list (ties with items beyond
        the k-th place cannot be seen from a top-k list).
    """
    ks = _check_ks(ks)
    gt_i2t = _as_lists(img2txt, "img2txt")
    gt_t2i = _as_lists(txt2img, "txt2img")
    for name, idx, gt, scores in (
        ("topk_indices_i2t", topk_indices_i2t, gt_i2t, topk_scores_i2t),
        ("topk_indices_t2i", topk_indices_t2i, gt_t2i, topk_scores_t2i),
    ):
        if idx.dim() != 2 or idx.shape[0] != len(gt):
            raise ValueError(f"{name} must be [{len(gt)}, k], got {tuple(idx.shape)}")
        if idx.shape[1] < max(ks):
            raise ValueError(f"{name} has k={idx.shape[1]} < max(ks)={max(ks)}: R@{max(ks)} cannot be computed")
        if scores is not None and scores.shape != idx.shape:
            raise ValueError(f"scores for {name} must have shape {tuple(idx.shape)}, got {tuple(scores.shape)}")
    ranks_i2t = _topk_ranks(topk_indices_i2t, gt_i2t, topk_scores_i2t)
    ranks_t2i = _topk_ranks(topk_indices_t2i, gt_t2i, topk_scores_t2i)
    return _recall_dict(ranks_i2t, ranks_t2i, ks)


def zero_shot_accuracy(
    logits: torch.Tensor, labels: torch.Tensor | Sequence[int], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-K zero-shot classification accuracy in percent, e.g. ``{"top1": 61.2, "top5": 88.0}``.

    Why: CLIP-style zero-shot ImageNet-CN / CIFAR evaluation compares every image embedding with one text
    embedding per class (prompt ensemble averaged); this turns the resulting logits into accuracies.

    Args:
        logits: ``[num_images, num_classes]`` image-to-class scores.
        labels: ``[num_images]`` true class index of each image.
        ks: the K's; the keys are ``f"top{k}"``. A K of at least ``num_classes`` is always 100.

    Ties are pessimistic, as in :func:`retrieval_recall`: the true class ranks behind every other class with
    the same logit, so constant logits score 0 top-1 instead of depending on the class order.
    """
    ks = _check_ks(ks)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [num_images, num_classes], got {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device).long().reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {logits.shape[0]} rows of logits")
    if labels.numel() == 0:
        return {f"top{k}": 0.0 for k in ks}
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]})")
    true = logits.gather(1, labels[:, None])
    rank = (logits >= true).sum(dim=1) - 1  # the true class itself is counted once
    return {f"top{k}": 100.0 * (rank < k).double().mean().item() for k in ks}


# ----------------------------------------------------------------------------------------------------------
# Distributed evaluation
# ----------------------------------------------------------------------------------------------------------


def gather_for_eval(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate a tensor from every process along dim 0, allowing a different length on each process.

    Why: during evaluation each rank encodes its shard of the gallery (or scores its shard of the queries), and
    the shards need not have equal lengths. ``torch.distributed.all_gather`` requires equal shapes, so the
    lengths are gathered first, every shard is padded to the longest, gathered, and trimmed back.

    Args:
        tensor: ``[n_rank, ...]``; the trailing dims and the dtype must be the same on every rank, and the
            device must suit the backend (CUDA tensors for NCCL, CPU for gloo).
        group: process group; ``None`` is the default group.

    Returns:
        ``[sum(n_rank), ...]``: rank 0's rows, then rank 1's, ... in rank order. When ``torch.distributed`` is
        not available or not initialised, or the group has a single process, ``tensor`` itself is returned
        (identity). No gradient flows through the gather (evaluation only). It is a collective: every rank
        must call it. If a sampler padded or interleaved the shards (``DistributedSampler`` repeats samples
        to even out the shards), gather the example indices the same way and use them to reorder and dedupe.
    """
    return gather_varlen(tensor, group=group)
