"""GRIT-VLP grouped mini-batch sampling: batches made of pairs that are similar to each other.

GRIT-VLP (Byun et al., ECCV 2022) observes that in-batch negatives of a random batch are mostly easy, so ITC and
ITM learn little from them. It orders the data so that consecutive pairs are close in the model's own embedding
space (a greedy chain alternating image -> most similar text -> most similar image ...), cuts the chain into
batch-sized groups, and shuffles whole groups; each batch then consists of mutually hard negatives.

`grit_grouping` computes the order from embeddings; `GritSampler` serves it (a random permutation until the first
groups exist) and keeps the trailing partial group last, so that every batch the DataLoader cuts is one group.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


__all__ = ["GritSampler", "grit_grouping"]


def _greedy_chain(image_embeds: torch.Tensor, text_embeds: torch.Tensor, start: int) -> list[int]:
    """GRIT's chain over one search space: from image p take the most similar unvisited text q, from text q the
    most similar unvisited image, and so on; each step appends the pair it lands on (pair = image = text index)."""
    size = image_embeds.shape[0]
    sims = image_embeds @ text_embeds.t()  # (images, texts)
    visited = torch.zeros(size, dtype=torch.bool, device=sims.device)
    neg_inf = torch.finfo(sims.dtype).min
    chain = [start]
    visited[start] = True
    current, from_image = start, True
    for _ in range(size - 1):
        # from an image: score the texts (row); from a text: score the images (column)
        scores = sims[current] if from_image else sims[:, current]
        current = int(scores.masked_fill(visited, neg_inf).argmax())
        visited[current] = True
        chain.append(current)
        from_image = not from_image
    return chain


def grit_grouping(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    search_space: int = 4096,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """An ordering of all pairs in which neighbours are hard negatives of each other (GRIT-VLP).

    Args:
        image_embeds: `(N, D)` normalised image embeddings of the N training pairs.
        text_embeds: `(N, D)` normalised text embeddings of the same pairs.
        search_space: the pairs are shuffled and split into chunks of this size, and each chunk is chained
            separately (cost `O(search_space^2)` per chunk; GRIT uses 1920).
        generator: seeds the shuffle and each chain's start.

    Returns:
        `(N,)` int64 permutation of `range(N)`: cut it into consecutive batch-sized groups.
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.dim() != 2:
        raise ValueError(
            f"need two (N, D) tensors of one shape, got {tuple(image_embeds.shape)}, {tuple(text_embeds.shape)}"
        )
    num = image_embeds.shape[0]
    shuffled = torch.randperm(num, generator=generator)
    order = []
    for begin in range(0, num, search_space):
        chunk = shuffled[begin : begin + search_space]
        start = int(torch.randint(len(chunk), (1,), generator=generator))
        device = image_embeds.device
        chain = _greedy_chain(image_embeds[chunk.to(device)].float(), text_embeds[chunk.to(device)].float(), start)
        order.append(chunk[torch.tensor(chain, dtype=torch.long)])
    return torch.cat(order) if order else torch.empty(0, dtype=torch.long)


class GritSampler(Sampler[int]):
    """Index sampler that yields GRIT groups in a random group order each epoch.

    Until `set_order` gives it an ordering (the first epoch, when the model knows nothing yet), it yields a seeded
    random permutation. Afterwards it cuts the ordering into groups of `batch_size`, shuffles whole groups with a
    generator seeded by `(seed, epoch)` (GRIT's mini-batch-level shuffle), and keeps the trailing partial group last
    so that group and batch boundaries coincide. With accelerate's batch sharding across processes each rank
    receives whole batches, i.e. whole groups. Everything is a function of (order, seed, epoch), so a resumed run
    reproduces the same batches.

    Args:
        num_samples: dataset length.
        batch_size: group size = per-device batch size.
        seed: base seed of the permutations.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.order: torch.Tensor | None = None
        self.order_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_order(self, order: torch.Tensor, epoch: int) -> None:
        """Use `order` (a permutation of the dataset indices) from `epoch` on."""
        order = torch.as_tensor(order, dtype=torch.long).cpu()
        if order.shape != (self.num_samples,) or not torch.equal(order.sort().values, torch.arange(self.num_samples)):
            raise ValueError(f"order must be a permutation of range({self.num_samples})")
        self.order = order
        self.order_epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.order is None:
            yield from torch.randperm(self.num_samples, generator=generator).tolist()
            return
        full = self.num_samples // self.batch_size * self.batch_size
        groups = self.order[:full].view(-1, self.batch_size)
        groups = groups[torch.randperm(groups.shape[0], generator=generator)]
        yield from groups.reshape(-1).tolist()
        yield from self.order[full:].tolist()

    def state_dict(self) -> dict:
        """What a checkpoint needs to reproduce the batches: the ordering and the epoch it was computed for."""
        return {"order": self.order, "order_epoch": self.order_epoch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("order") is not None:
            self.set_order(state["order"], state["order_epoch"])
