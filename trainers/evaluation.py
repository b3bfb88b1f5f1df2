"""Retrieval and zero-shot evaluation of any hf-vlp model, sharded over processes.

The gallery is encoded once (`model.encode_image` / `model.encode_text`, each process its share, gathered), then
every process ranks its share of the queries against the whole gallery in chunks: `hf_vlp.retrieval.chunked_topk`
for global embeddings, `blockwise_topk` over `model.similarity` for token-wise (FILIP) models. A model with a
cross encoder (a `RerankingModel`: `rerank_scores`) re-ranks each query's top-k. The ranked lists are gathered
and turned into Recall@1/5/10 both ways and mean recall with `hf_vlp.retrieval`, identically on every process.
Embedding selection, concatenation and gathering are the retrieval core's (`hf_vlp.models.retrieval_core`).

Zero-shot classification encodes every class with each prompt template (`DEFAULT_ZERO_SHOT_PROMPT` by default, or
an ensemble from a file or a preset) and scores images against the template ensembles (`hf_vlp.zero_shot`), top-1 /
top-5.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers.utils import ModelOutput

from hf_vlp.models.processing_vlp import DEFAULT_ZERO_SHOT_PROMPT
from hf_vlp.models.retrieval_core import (
    RerankingModel,
    blockwise_topk,
    cat_embeddings,
    gather_embeddings,
    gather_varlen,
    implementation_of,
    rerank_topk,
    select_embeddings,
    tensor_fields,
)
from hf_vlp.retrieval import (
    chunked_topk,
    dense_from_topk,
    retrieval_recall,
    retrieval_recall_from_topk,
    zero_shot_accuracy,
)
from hf_vlp.zero_shot import class_prompts, template_ensemble_scores
from trainers.data import BadSampleError, EvalGallery, decode_image


__all__ = [
    "EvalRuntime",
    "ZeroShotSet",
    "build_zero_shot_set",
    "chance_recall",
    "encode_images",
    "encode_texts",
    "eval_mode",
    "evaluate_retrieval",
    "evaluate_zero_shot",
]

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)


@dataclass
class EvalRuntime:
    """Where and how to run evaluation: device, batching, the process group share, mixed precision, progress."""

    device: torch.device
    batch_size: int = 64
    num_workers: int = 0
    rank: int = 0
    world_size: int = 1
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    show_progress: bool = False

    def shard(self, num_items: int) -> tuple[int, int]:
        """This process's contiguous share `[start, stop)` of `num_items` (gathering keeps rank order)."""
        return num_items * self.rank // self.world_size, num_items * (self.rank + 1) // self.world_size


@dataclass
class ZeroShotSet:
    """Images with a class label each, the class names prompts are built from and, optionally, the prompt
    templates of this benchmark (a template ensemble; the evaluation's default prompt when None)."""

    images: list[Any]
    labels: list[int]
    class_names: list[str]
    templates: list[str] | None = None


def _label_index(label: Any, slot: dict[str, int], num_classes: int) -> int:
    """A record's label as a class index: a class name, or an index (int or digits, as image folders `000/`)."""
    if str(label) in slot:
        return slot[str(label)]
    if (isinstance(label, int) or str(label).isdigit()) and 0 <= int(label) < num_classes:
        return int(label)
    raise ValueError(f"label {label!r} is neither one of the {num_classes} class names nor a class index")


def build_zero_shot_set(
    records: Sequence[dict],
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> ZeroShotSet | None:
    """The labelled images of `records` (one per `image_id`; records whose label is empty are left out).

    Without `class_names`, the classes are the sorted distinct labels. With them (a class-name file, a preset),
    a label is a class name or an index into them. Returns None when no record has a label, so callers can pass
    any eval split and get zero-shot metrics only where labels exist.
    """
    images, labels, seen = [], [], set()
    for index, record in enumerate(records):
        label = record.get(label_column)
        image_id = str(record.get("image_id", index))
        if label in (None, "") or image_id in seen:
            continue
        seen.add(image_id)
        images.append(record["image"])
        labels.append(label)
    if not images:
        return None
    names = list(class_names) if class_names is not None else sorted({str(label) for label in labels})
    slot = {name: index for index, name in enumerate(names)}
    indices = [_label_index(label, slot, len(names)) for label in labels]
    return ZeroShotSet(images, indices, names, list(templates) if templates is not None else None)


# ------------------------------------------------------------------------------------------------ encoding
class _ImageRefs(Dataset):
    """Decodes lazy image references in the DataLoader workers; a bad image becomes None (counted later)."""

    def __init__(self, refs: Sequence[Any]) -> None:
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Image.Image | None:
        try:
            return decode_image(self.refs[index])
        except BadSampleError as error:
            logger.warning(
                "Evaluation image %d (%s) cannot be used (%s); it is encoded as a blank image",
                index,
                _reference_name(self.refs[index]),
                error,
            )
            return None


def _reference_name(ref: Any) -> str:
    """What a user recognises an image reference by: its path (a string, or a `datasets` Image's `path`)."""
    if isinstance(ref, dict):
        ref = ref.get("path") or "in-memory image"
    return str(ref) if isinstance(ref, (str, os.PathLike)) else type(ref).__name__


class _ImageBatcher:
    """Collate decoded images into `pixel_values`; a bad image keeps its slot as zeros so indices stay aligned."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: list[Image.Image | None]) -> tuple[torch.Tensor, int]:
        good = [image for image in images if image is not None]
        placeholder = [Image.new("RGB", (8, 8))] if not good else []
        pixels = self.processor(images=good or placeholder, return_tensors="pt")["pixel_values"]
        if len(good) == len(images):
            return pixels, 0
        out = pixels.new_zeros((len(images), *pixels.shape[1:]))
        out[torch.tensor([image is not None for image in images])] = pixels[: len(good)]
        return out, len(images) - len(good)


class _TextBatcher:
    def __init__(self, processor: Any, max_length: int | None) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        kwargs = {"padding": "longest", "truncation": True, "return_tensors": "pt"}
        if self.max_length is not None:
            kwargs["max_length"] = self.max_length
        return dict(self.processor(text=list(texts), **kwargs))


def _to_float(output: ModelOutput) -> ModelOutput:
    """Mixed-precision embeddings in float32 for scoring (top-k needs one dtype on both sides)."""
    return type(output)(
        **{key: value.float() if value.is_floating_point() else value for key, value in tensor_fields(output).items()}
    )


def _progress(iterable, runtime: EvalRuntime, description: str):
    if not runtime.show_progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, leave=False)


@torch.no_grad()
def _encode(
    encode: Callable[..., ModelOutput], loader: DataLoader, runtime: EvalRuntime, description: str, images: bool
) -> tuple[list[ModelOutput], int]:
    outputs, num_bad = [], 0
    for batch in _progress(loader, runtime, description):
        with runtime.autocast():
            if images:
                pixels, bad = batch
                num_bad += bad
                outputs.append(encode(pixel_values=pixels.to(runtime.device)))
            else:
                outputs.append(encode(**{key: value.to(runtime.device) for key, value in batch.items()}))
    return outputs, num_bad


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block (no dropout, no patch dropout), back in its own mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def encode_images(
    model: nn.Module, images: Sequence[Any], processor: Any, runtime: EvalRuntime
) -> tuple[ModelOutput, int]:
    """`model.encode_image` of every image (this process encodes its share; all shares are gathered).

    Returns the gathered output (float32 fields) and the number of images that could not be decoded (encoded as
    blank images so that indices stay aligned; summed over processes).
    """
    start, stop = runtime.shard(len(images))
    # A process with an empty share still has to take part in the gathers with the right field shapes.
    share = images[start:stop] if stop > start else images[:1]
    loader = DataLoader(
        _ImageRefs(share),
        batch_size=runtime.batch_size,
        num_workers=runtime.num_workers,
        collate_fn=_ImageBatcher(processor),
    )
    outputs, num_bad = _encode(model.encode_image, loader, runtime, "Encoding images", images=True)
    local = cat_embeddings(outputs)
    if stop == start:
        local, num_bad = select_embeddings(local, slice(0, 0)), 0
    num_bad = _sum_over_processes(num_bad, runtime)
    return _to_float(_gathered(local, runtime)), num_bad


def encode_texts(
    model: nn.Module, texts: Sequence[str], processor: Any, runtime: EvalRuntime, max_length: int | None = None
) -> ModelOutput:
    """`model.encode_text` of every text (sharded and gathered like `encode_images`), float32 fields."""
    if max_length is None:
        max_length = getattr(processor, "max_length", None)
    start, stop = runtime.shard(len(texts))
    share = list(texts[start:stop]) if stop > start else list(texts[:1])
    loader = DataLoader(share, batch_size=runtime.batch_size, collate_fn=_TextBatcher(processor, max_length))
    local = cat_embeddings(_encode(model.encode_text, loader, runtime, "Encoding texts", images=False)[0])
    if stop == start:
        local = select_embeddings(local, slice(0, 0))
    return _to_float(_gathered(local, runtime))


def _gathered(output: ModelOutput, runtime: EvalRuntime) -> ModelOutput:
    """Every process's share in rank order, on every process; the runtime decides (a single-process evaluation may
    run on one rank of an initialised process group)."""
    return output if runtime.world_size == 1 else gather_embeddings(output)


def _sum_over_processes(value: int, runtime: EvalRuntime) -> int:
    if runtime.world_size == 1:
        return value
    total = torch.tensor([value], device=runtime.device)
    dist.all_reduce(total)
    return int(total.item())


# ------------------------------------------------------------------------------------------------ ranking
def _rank(
    model: nn.Module,
    queries: ModelOutput,
    gallery: ModelOutput,
    query_is_image: bool,
    k: int,
    chunk_size: int,
    token_wise: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items for each query: `(scores, indices)`, both `[Q, k]`."""
    if not token_wise:
        return chunked_topk(queries.embeds, gallery.embeds, k, chunk_size=chunk_size)

    def score_block(start: int, stop: int) -> torch.Tensor:
        block = select_embeddings(gallery, slice(start, stop))
        if query_is_image:
            return model.similarity(queries, block)[0]
        return model.similarity(block, queries)[1].t()

    return blockwise_topk(score_block, gallery.embeds.shape[0], k, chunk_size)


def _query_topk(
    model: nn.Module,
    images: ModelOutput,
    texts: ModelOutput,
    direction: str,
    runtime: EvalRuntime,
    k: int,
    chunk_size: int,
    reranker: RerankingModel | None,
    combine: str | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of the queries of one direction, ranked (and re-ranked), gathered over processes."""
    query_is_image = direction == "i2t"
    queries_all = images if query_is_image else texts
    start, stop = runtime.shard(queries_all.embeds.shape[0])
    queries = select_embeddings(queries_all, slice(start, stop))
    gallery = texts if query_is_image else images
    token_wise = getattr(getattr(model, "config", None), "similarity", "global") == "token_wise"
    query_chunk = 256
    scores, indices = [], []
    for begin in range(0, stop - start, query_chunk):
        block = select_embeddings(queries, slice(begin, begin + query_chunk))
        block_scores, block_indices = _rank(model, block, gallery, query_is_image, k, chunk_size, token_wise)
        scores.append(block_scores)
        indices.append(block_indices)
    num_cols = min(k, gallery.embeds.shape[0])
    scores = torch.cat(scores) if scores else torch.empty(0, num_cols, device=runtime.device)
    indices = torch.cat(indices) if indices else torch.empty(0, num_cols, dtype=torch.long, device=runtime.device)
    if reranker is not None and scores.numel():

        def pair_scorer(query_index: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
            image_index, text_index = (
                (query_index, candidate_index) if query_is_image else (candidate_index, query_index)
            )
            with runtime.autocast():
                return reranker.rerank_scores(
                    select_embeddings(images, image_index), select_embeddings(texts, text_index)
                )

        query_index = torch.arange(start, stop, device=indices.device)
        scores, indices = rerank_topk(
            query_index, indices, scores, pair_scorer, combine=combine, batch_size=runtime.batch_size
        )
    scores, indices = scores.float().contiguous(), indices.contiguous()
    if runtime.world_size == 1:
        return scores, indices
    return gather_varlen(scores), gather_varlen(indices)


def evaluate_retrieval(
    model: nn.Module,
    gallery: EvalGallery,
    processor: Any,
    runtime: EvalRuntime,
    *,
    topk: int = 128,
    chunk_size: int = 4096,
    rerank: bool = True,
    rerank_combine: str | float = "sum",
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Image-text retrieval metrics of `model` on `gallery`: `i2t_R@K`, `t2i_R@K`, `*_mean`, `mean_recall` (percent).

    Also reports `num_images`, `num_texts`, and `num_bad_images` when some gallery images could not be decoded
    (they stay in the gallery as blank images, so the numbers remain comparable with the full protocol).
    Every process must call it (the encoding and the ranking are sharded); all return the same numbers.
    """
    if not gallery.images or not gallery.texts:
        raise ValueError("the evaluation gallery has no images or no texts")
    with eval_mode(model):
        images, num_bad = encode_images(model, gallery.images, processor, runtime)
        texts = encode_texts(model, gallery.texts, processor, runtime)
        reranker = implementation_of(model, RerankingModel) if rerank else None
        k = max(topk, max(ks))
        results = {
            direction: _query_topk(model, images, texts, direction, runtime, k, chunk_size, reranker, rerank_combine)
            for direction in ("i2t", "t2i")
        }
    (scores_i2t, indices_i2t), (scores_t2i, indices_t2i) = results["i2t"], results["t2i"]
    txt2imgs = gallery.txt2imgs
    if indices_i2t.shape[1] >= max(ks) and indices_t2i.shape[1] >= max(ks):
        metrics = retrieval_recall_from_topk(
            indices_i2t.cpu(),
            indices_t2i.cpu(),
            gallery.img2txt,
            txt2imgs,
            ks,
            topk_scores_i2t=scores_i2t.cpu(),
            topk_scores_t2i=scores_t2i.cpu(),
        )
    else:  # a gallery smaller than max(ks): the lists hold every item, so the dense matrices are exact
        metrics = retrieval_recall(
            dense_from_topk(indices_i2t.cpu(), scores_i2t.cpu(), len(gallery.texts)),
            gallery.img2txt,
            txt2imgs,
            ks,
            sim_t2i=dense_from_topk(indices_t2i.cpu(), scores_t2i.cpu(), len(gallery.images)),
        )
    metrics.update(num_images=len(gallery.images), num_texts=len(gallery.texts))
    if num_bad:
        metrics["num_bad_images"] = num_bad
    return metrics


def chance_recall(gallery: EvalGallery, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Expected `i2t_mean`, `t2i_mean` and `mean_recall` (percent) of a model that ranks at random, to read the
    metrics of a run against: with `g` ground truths among `n` items, R@k is `1 - C(n - g, k) / C(n, k)`."""

    def expected(ground_truths: list[list[int]], num_gallery: int) -> float:
        total = 0.0
        for k in ks:
            k = min(k, num_gallery)
            for items in ground_truths:
                total += 1.0 - math.comb(num_gallery - len(items), k) / math.comb(num_gallery, k)
        return 100.0 * total / (len(ks) * len(ground_truths))

    i2t = expected(gallery.img2txt, len(gallery.texts))
    t2i = expected(gallery.txt2imgs, len(gallery.images))
    return {"i2t_mean": i2t, "t2i_mean": t2i, "mean_recall": (i2t + t2i) / 2}


def evaluate_zero_shot(
    model: nn.Module,
    dataset: ZeroShotSet,
    processor: Any,
    runtime: EvalRuntime,
    prompt: str | Sequence[str] = DEFAULT_ZERO_SHOT_PROMPT,
) -> dict[str, float]:
    """Zero-shot classification accuracy: `top1` (and `top5` with more than 5 classes), in percent.

    Each class is encoded with every template (`dataset.templates` when the set has its own, else `prompt`: one
    template or a list) and scored as their ensemble (`hf_vlp.zero_shot.template_ensemble_scores`).
    """
    templates = dataset.templates or ([prompt] if isinstance(prompt, str) else list(prompt))
    with eval_mode(model), torch.no_grad():
        images, _ = encode_images(model, dataset.images, processor, runtime)
        prompts = encode_texts(model, class_prompts(dataset.class_names, templates), processor, runtime)
        logits = torch.cat(
            [
                template_ensemble_scores(model, select_embeddings(images, slice(s, s + 256)), prompts, len(templates))
                for s in range(0, images.embeds.shape[0], 256)
            ]
        )
    ks = (1, 5) if len(dataset.class_names) > 5 else (1,)
    return zero_shot_accuracy(logits.float().cpu(), dataset.labels, ks=ks)
