"""GRIT-VLP groups on the trainer side: encode the training set, group it, keep the groups with checkpoints.

`trainers.sampler` holds the algorithm (`grit_grouping`) and the sampler that serves its order; this module is what
`VLPTrainer` runs around them: one no-grad encoding pass over the training set, sharded over processes; the grouping
computed on rank 0 and broadcast, so every process cuts the same batches; and the sampler's state saved in each
checkpoint (`GRIT_STATE_NAME`) so that a resumed run sees the batches the interrupted one would have seen.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hf_vlp.retrieval import gather_for_eval

from .evaluation import EvalRuntime, eval_mode
from .grad_cache import text_inputs_of
from .sampler import GritSampler, grit_grouping


__all__ = ["GRIT_STATE_NAME", "load_grit_state", "refresh_grit_order", "save_grit_state", "train_set_embeddings"]

logger = logging.getLogger(__name__)

GRIT_STATE_NAME = "grit_sampler.pt"


def refresh_grit_order(
    sampler: GritSampler,
    epoch: int,
    embed: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    search_space: int,
    runtime: EvalRuntime,
) -> None:
    """Give `sampler` the groups of `epoch`, computed from the embeddings `embed()` returns (on every process).

    Skipped when the sampler already holds the order of `epoch` (restored from a checkpoint): recomputing it with a
    model that is partway through the epoch would change the batches of a resumed run.
    """
    sampler.set_epoch(epoch)
    if sampler.order_epoch == epoch:
        return
    started = time.time()
    image_embeds, text_embeds = embed()
    order = torch.empty(len(image_embeds), dtype=torch.long)
    if runtime.rank == 0:
        generator = torch.Generator().manual_seed(sampler.seed + epoch)
        order = grit_grouping(image_embeds, text_embeds, search_space, generator)
    if runtime.world_size > 1:
        order = order.to(runtime.device)
        dist.broadcast(order, src=0)
    sampler.set_order(order.cpu(), epoch)
    logger.info("GRIT groups for epoch %d computed in %.1fs", epoch, time.time() - started)


def train_set_embeddings(
    model: nn.Module,
    dataset: Dataset,
    collator: Any,
    runtime: EvalRuntime,
    prepare_inputs: Callable[[dict], dict],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text embeddings of every item of `dataset` (rows of bad items stay zero).

    Each process encodes its shard (`runtime.shard`); the rows are gathered with their dataset indices, so every
    process returns the full `(len(dataset), D)` pair. `prepare_inputs` moves a collated batch to the device.
    """
    start, stop = runtime.shard(len(dataset))
    loader = DataLoader(
        _Indexed(dataset, range(start, stop)),
        batch_size=runtime.batch_size,
        num_workers=runtime.num_workers,
        collate_fn=_IndexedCollator(collator),
    )
    indices, images, texts = [], [], []
    with eval_mode(model), torch.no_grad():
        for batch_indices, batch in loader:
            if batch is None:
                continue
            batch = prepare_inputs(batch)
            with runtime.autocast():
                images.append(model.encode_image(pixel_values=batch["pixel_values"]).embeds.float())
                texts.append(model.encode_text(**text_inputs_of(batch)).embeds.float())
            indices.append(batch_indices.to(runtime.device))
    dim = images[0].shape[1] if images else 0
    if runtime.world_size > 1:
        dim_tensor = torch.tensor([dim], device=runtime.device)
        dist.all_reduce(dim_tensor, op=dist.ReduceOp.MAX)
        dim = int(dim_tensor.item())
    local_indices = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long, device=runtime.device)
    local_images = torch.cat(images) if images else torch.empty(0, dim, device=runtime.device)
    local_texts = torch.cat(texts) if texts else torch.empty(0, dim, device=runtime.device)
    all_indices = gather_for_eval(local_indices).cpu()
    image_embeds = torch.zeros(len(dataset), dim)
    text_embeds = torch.zeros(len(dataset), dim)
    image_embeds[all_indices] = gather_for_eval(local_images).cpu()
    text_embeds[all_indices] = gather_for_eval(local_texts).cpu()
    return image_embeds, text_embeds


def save_grit_state(sampler: GritSampler | None, checkpoint_dir: str) -> None:
    """Write the sampler's groups into a checkpoint folder (nothing before the first groups exist)."""
    if sampler is not None and sampler.order is not None:
        torch.save(sampler.state_dict(), os.path.join(checkpoint_dir, GRIT_STATE_NAME))


def load_grit_state(checkpoint_dir: str) -> dict[str, Any] | None:
    """The sampler state a checkpoint folder holds, or None when it holds none."""
    path = os.path.join(checkpoint_dir, GRIT_STATE_NAME)
    return torch.load(path, weights_only=True) if os.path.isfile(path) else None


class _Indexed(Dataset):
    """`(index, item)` for a range of a dataset, so that embeddings stay attached to their items."""

    def __init__(self, dataset: Dataset, indices: range) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any]:
        index = self.indices[position]
        return index, self.dataset[index]


class _IndexedCollator:
    """Collate the good items (a bad one is None) and keep their dataset indices alongside."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[torch.Tensor, dict | None]:
        kept = [(index, item) for index, item in items if item is not None]
        batch = self.collator([item for _, item in kept]) if kept else None
        return torch.tensor([index for index, _ in kept], dtype=torch.long), batch
