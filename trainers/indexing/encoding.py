"""Image decoding in worker processes and batched encoding, collected chunk by chunk for an index build.

Workers decode and preprocess one record each (a corrupt image comes back as a skip reason, never an exception) and
send back the pixels and the record without its image payload; `ChunkAccumulator` encodes the items in fixed
batches, so a resumed build encodes exactly the batches an uninterrupted one would, and writes a chunk atomically
when it is complete (`hf_vlp.index.write_chunk`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from trainers.data.bad_samples import BadSampleError
from trainers.data.images import decode_image

from .sources import image_path


__all__ = ["ChunkAccumulator", "imap_records", "light_record", "prepare_image", "stack_pixels"]

_WORKER_PROCESSOR: Any = None


def _init_worker(image_processor: Any) -> None:
    global _WORKER_PROCESSOR
    _WORKER_PROCESSOR = image_processor


def prepare_image(job: tuple[int, int, dict]) -> tuple[int, int, dict, np.ndarray | None, str | None]:
    """Decode + preprocess one record in a worker: `(chunk, row, record, pixels or None, skip reason or None)`."""
    chunk, row, record = job
    from hf_vlp.models import InvalidImageError

    try:
        image = decode_image(record["image"])
        pixels = _WORKER_PROCESSOR(images=[image], return_tensors="np")["pixel_values"][0]
    except BadSampleError as error:
        return chunk, row, light_record(record), None, f"{error.reason}\t{error.detail}"
    except InvalidImageError as error:
        return chunk, row, light_record(record), None, f"corrupt_image\t{error}"
    return chunk, row, light_record(record), pixels.astype(np.float32), None


def light_record(record: dict) -> dict:
    """The record without its image payload (bytes are not sent back from the worker)."""
    return {"path": image_path(record["image"]), "text": record.get("text"), "image_id": record.get("image_id")}


def imap_records(function: Callable, jobs: Iterable, num_workers: int, image_processor: Any) -> Iterator:
    """`function` over `jobs` in order, in `num_workers` processes that hold `image_processor` (0: this process)."""
    if num_workers <= 0:
        _init_worker(image_processor)
        yield from map(function, jobs)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(num_workers, initializer=_init_worker, initargs=(image_processor,)) as pool:
        yield from pool.imap(function, jobs, chunksize=8)


class ChunkAccumulator:
    """Collects one chunk's encoded items, encodes in fixed batches, and writes the chunk when it is complete."""

    def __init__(self, encode: Callable[[list[Any]], Any], batch_size: int, token_wise: bool) -> None:
        self.encode = encode
        self.batch_size = batch_size
        self.token_wise = token_wise
        self.reset()

    def reset(self) -> None:
        self.inputs: list[Any] = []
        self.items: dict[str, list] = {"row": [], "sub": [], "id": [], "path": [], "text": []}
        self.embeds: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.skipped: dict[str, int] = {}

    def add(self, value: Any, row: int, sub: int, item_id: str, path: str | None, text: str | None) -> None:
        self.inputs.append(value)
        for key, v in (("row", row), ("sub", sub), ("id", item_id), ("path", path), ("text", text)):
            self.items[key].append(v)
        if len(self.inputs) == self.batch_size:
            self.flush()

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def flush(self) -> None:
        if not self.inputs:
            return
        out = self.encode(self.inputs)
        self.embeds.append(out.embeds.float().cpu().numpy())
        if self.token_wise:
            self.tokens.append(out.token_embeds.float().cpu().numpy())
            self.masks.append(out.token_mask.cpu().numpy())
        self.inputs = []

    def write(self, index_dir: str, name: str) -> int:
        from hf_vlp.index import write_chunk

        self.flush()
        count = len(self.items["row"])
        dim = self.embeds[0].shape[1] if self.embeds else 0
        embeds = np.concatenate(self.embeds) if self.embeds else np.zeros((0, dim), np.float32)
        tokens = masks = None
        if self.token_wise and self.tokens:
            length = max(t.shape[1] for t in self.tokens)
            tokens = np.concatenate([np.pad(t, ((0, 0), (0, length - t.shape[1]), (0, 0))) for t in self.tokens])
            masks = np.concatenate([np.pad(m, ((0, 0), (0, length - m.shape[1]))) for m in self.masks])
        write_chunk(index_dir, name, embeds, self.items, self.skipped, tokens, masks)
        self.reset()
        return count


def stack_pixels(pixels: list[np.ndarray]):
    """The batch tensor of a list of preprocessed images."""
    import torch

    return torch.from_numpy(np.stack(pixels))
