"""Torch datasets over lazy image-text records, and the retrieval evaluation gallery.

* `ImageTextDataset`: map-style, over any sequence of records (a list, or `HFDatasetRecords`). A bad sample makes
  `__getitem__` return None; `ImageTextCollator` drops it and reports the count.
* `StreamingImageTextDataset`: iterable, over shard files, split across nodes and DataLoader workers with no
  start-up work proportional to the data (it never lists or counts samples), so it scales to Wukong's 100M pairs.
  Bad samples are skipped; the next good item carries how many were skipped before it in `num_skipped`.
* `build_eval_gallery`: de-duplicated images and texts with the index maps that retrieval recall needs.

Images are decoded here, i.e. in the DataLoader workers, never in the readers.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .bad_samples import BadSampleCounter, BadSampleError, DataFormatError
from .images import ImageRef, decode_image
from .shards import check_shard_paths, read_shard


__all__ = [
    "CaptionStrategy",
    "EvalGallery",
    "ImageTextDataset",
    "StreamingImageTextDataset",
    "build_eval_gallery",
    "clean_captions",
]

CaptionStrategy = Literal["sample", "first", "explode"]
_CAPTION_STRATEGIES = ("sample", "first", "explode")

# What a failing shard can raise part-way (truncated tar or gzip, broken parquet, unreadable CSV). Programming errors
# (TypeError, KeyError, ...) are deliberately not in the list, and DataFormatError is re-raised before this applies.
_SHARD_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError, csv.Error, zlib.error)


def clean_captions(text: Any) -> list[str]:
    """A record's `text` (str, list of str, or None) as a list of stripped, non-empty captions."""
    if text is None:
        return []
    captions = [text] if isinstance(text, str) else list(text)
    return [caption.strip() for caption in captions if isinstance(caption, str) and caption.strip()]


def _check_strategy(strategy: str) -> None:
    if strategy not in _CAPTION_STRATEGIES:
        raise ValueError(f"caption_strategy must be one of {_CAPTION_STRATEGIES}, got {strategy!r}")


class SharedEpoch:
    """The epoch number in shared memory, so that DataLoader workers see `set_epoch` without being restarted.

    A worker holds its own copy of the dataset; a plain `int` set in the main process after the workers started
    never reaches it, so with `persistent_workers=True` every epoch would replay epoch 0's caption draw and shard
    order. A one-element shared-memory tensor is inherited by forked workers and passed by handle to spawned ones,
    so one write in the main process is read by all of them. The Trainer sets the epoch before it starts iterating,
    and workers only prefetch once iteration starts, so no item of an epoch is drawn with the previous one.
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = torch.tensor([epoch], dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self._value[0])

    def set(self, epoch: int) -> None:
        self._value[0] = epoch


class _EpochMixin:
    """`epoch` / `set_epoch` over a `SharedEpoch` (see there for why it is shared)."""

    _shared_epoch: SharedEpoch

    @property
    def epoch(self) -> int:
        return self._shared_epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for the per-epoch draws; reaches DataLoader workers that persist across epochs."""
        self._shared_epoch.set(epoch)


def _sample_caption(captions: list[str], seed: int, epoch: int, key: object) -> str:
    """One caption, chosen from (seed, epoch, key) alone so the choice does not depend on order or worker."""
    if len(captions) == 1:
        return captions[0]
    return captions[random.Random(f"{seed}:{epoch}:{key}").randrange(len(captions))]


def _decode_item(image_ref: ImageRef, text: str, image_id: str, counter: BadSampleCounter) -> dict | None:
    try:
        image = decode_image(image_ref)
    except BadSampleError as error:
        counter.record(image_id, error.reason, error.detail)
        return None
    return {"image": image, "text": text, "image_id": image_id}


class ImageTextDataset(_EpochMixin, Dataset):
    """Map-style dataset of decoded `{"image": PIL RGB, "text": str, "image_id": str}` items.

    Args:
        records: lazy records from a reader; a sequence is indexed in place (not copied), any other iterable is
            read into a list.
        caption_strategy: for records with several captions. `"sample"` draws one per image per epoch from
            (seed, epoch, index), so every worker agrees without communicating; `"first"` always takes the first
            (canonical) caption; `"explode"` makes one item per caption, so `len` counts pairs, not images.
        seed: seed of the caption draw.
        counter: where bad samples are counted; a fresh `BadSampleCounter` by default.

    `__getitem__` returns None for a bad sample (missing/corrupt/empty image, no caption). Call `set_epoch` at each
    epoch with `"sample"`: accelerate forwards it to the dataset only when its sampler has no `set_epoch` of its own.
    """

    def __init__(
        self,
        records: Sequence[dict] | Iterable[dict],
        *,
        caption_strategy: CaptionStrategy = "sample",
        seed: int = 0,
        counter: BadSampleCounter | None = None,
    ) -> None:
        _check_strategy(caption_strategy)
        self.records = records if isinstance(records, Sequence) else list(records)
        self.caption_strategy = caption_strategy
        self.seed = seed
        self._shared_epoch = SharedEpoch()
        self.bad_samples = counter if counter is not None else BadSampleCounter()
        # "explode" needs the caption count of every record up front; a record without captions keeps one slot so
        # that it is still reported as bad when its turn comes.
        self._pairs = (
            [
                (index, caption)
                for index, record in enumerate(self.records)
                for caption in range(max(1, len(clean_captions(record.get("text")))))
            ]
            if caption_strategy == "explode"
            else None
        )

    def __len__(self) -> int:
        return len(self._pairs) if self._pairs is not None else len(self.records)

    def __getitem__(self, index: int) -> dict | None:
        record_index, caption_index = self._pairs[index] if self._pairs is not None else (index, None)
        record = self.records[record_index]
        image_id = str(record.get("image_id", record_index))
        captions = clean_captions(record.get("text"))
        if not captions:
            self.bad_samples.record(image_id, "empty_caption", "no non-empty caption")
            return None
        if caption_index is not None:
            text = captions[caption_index]
        elif self.caption_strategy == "first":
            text = captions[0]
        else:
            text = _sample_caption(captions, self.seed, self.epoch, record_index)
        return _decode_item(record.get("image"), text, image_id, self.bad_samples)


def _node_rank_and_world_size() -> tuple[int, int]:
    """This process's rank: from torch.distributed once initialised, else from torchrun's RANK/WORLD_SIZE.

    The environment fallback matters in DataLoader workers started with `spawn`, where the process group of the
    parent is not initialised but the launcher's environment is inherited.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _shuffle_buffer(items: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Approximate shuffle with bounded memory: each new item swaps with a random one of `size` held items."""
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


class StreamingImageTextDataset(_EpochMixin, IterableDataset):
    """Iterable dataset over shard files (tar, JSONL/CSV, parquet; local paths or fsspec URLs).

    Each consumer (node rank x DataLoader worker) gets whole shards, `shards[consumer::num_consumers]`, when there are
    at least as many shards as consumers; otherwise every consumer reads all shards and keeps every
    `num_consumers`-th record. Either way each record is read by exactly one consumer per epoch. Shards are not
    all the same size, so ranks may yield slightly different numbers of batches: use `max_steps` rather than
    epochs with many ranks.

    Args:
        shards: shard paths or URLs; their suffix picks the reader (see `read_shard`).
        caption_strategy: `"sample"` (one seeded caption per image per epoch), `"first"`, or `"explode"` (one item
            per caption, exploded before the shuffle buffer so captions of one image spread across batches).
        shuffle_buffer: 0 keeps file order; otherwise shard order is shuffled per epoch and records pass through
            a buffer of this many (still undecoded) records.
        seed: seed of the shard order, the buffer and the caption draw; combined with the epoch.
        split_by_node: split across ranks (see above). Set it to False when something else already gives each rank
            its own data; note that accelerate's `prepare` does so for iterable datasets (by dispatching batches
            from rank 0, or with `IterableDatasetShard`), so with `split_by_node=True` build the DataLoader without
            passing it through `accelerator.prepare`.
        image_column, text_column, captions_column, id_column: passed to the shard readers.

    Bad samples are counted in `bad_samples` (per worker process), skipped, and the next item yielded carries
    `num_skipped`: the number skipped since the previous item. In record-striding mode a malformed metadata row is
    counted by every consumer that reads it.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike],
        *,
        caption_strategy: CaptionStrategy = "sample",
        shuffle_buffer: int = 0,
        seed: int = 0,
        split_by_node: bool = True,
        image_column: str = "image",
        text_column: str = "text",
        captions_column: str | None = None,
        id_column: str | None = None,
    ) -> None:
        _check_strategy(caption_strategy)
        check_shard_paths(shards)
        self.shards = [os.fspath(shard) for shard in shards]
        self.caption_strategy = caption_strategy
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.split_by_node = split_by_node
        self.reader_kwargs = {
            "image_column": image_column,
            "text_column": text_column,
            "captions_column": captions_column,
            "id_column": id_column,
        }
        self._shared_epoch = SharedEpoch()
        self.bad_samples = BadSampleCounter()

    def _consumer(self) -> tuple[int, int]:
        rank, world_size = _node_rank_and_world_size() if self.split_by_node else (0, 1)
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return rank * num_workers + worker_id, world_size * num_workers

    def _read(self, shards: list[str]) -> Iterator[dict]:
        for shard in shards:
            try:
                yield from read_shard(shard, counter=self.bad_samples, **self.reader_kwargs)
            except DataFormatError:
                raise
            except _SHARD_ERRORS as error:
                self.bad_samples.record(shard, "corrupt_shard", f"{type(error).__name__}: {error}")

    def _with_one_caption(self, records: Iterable[dict]) -> Iterator[dict]:
        """Reduce each record to single-caption records (before decoding, so a dropped one costs nothing)."""
        for record in records:
            image_id = str(record.get("image_id"))
            captions = clean_captions(record.get("text"))
            if not captions:
                self.bad_samples.record(image_id, "empty_caption", "no non-empty caption")
                continue
            if self.caption_strategy == "explode":
                chosen = captions
            elif self.caption_strategy == "first":
                chosen = captions[:1]
            else:
                chosen = [_sample_caption(captions, self.seed, self.epoch, image_id)]
            for caption in chosen:
                yield {"image": record.get("image"), "text": caption, "image_id": image_id}

    def __iter__(self) -> Iterator[dict]:
        consumer, num_consumers = self._consumer()
        shards = list(self.shards)
        if self.shuffle_buffer > 0:
            # Same seed on every consumer, so all of them agree on the order before taking their slice.
            random.Random(f"{self.seed}:{self.epoch}:shards").shuffle(shards)
        if len(shards) >= num_consumers:
            records: Iterable[dict] = self._read(shards[consumer::num_consumers])
        else:
            records = itertools.islice(self._read(shards), consumer, None, num_consumers)
        pairs = self._with_one_caption(records)
        if self.shuffle_buffer > 1:
            pairs = _shuffle_buffer(pairs, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}:{consumer}"))
        skipped_so_far = self.bad_samples.total
        for pair in pairs:
            item = _decode_item(pair["image"], pair["text"], pair["image_id"], self.bad_samples)
            if item is not None:
                item["num_skipped"] = self.bad_samples.total - skipped_so_far
                skipped_so_far = self.bad_samples.total
                yield item


class EvalGallery(NamedTuple):
    """What retrieval evaluation needs: unique images, unique texts, and who matches whom.

    `img2txt[i]` lists every text of image `i` and is the complete relation. `txt2img[t]` is one matching image per
    text, which is all there is for caption datasets (COCO, Flickr30k); for query datasets where a text matches
    several images (MUGE) use `txt2imgs`.
    """

    images: list[Any]
    texts: list[str]
    img2txt: list[list[int]]
    txt2img: list[int]

    @property
    def txt2imgs(self) -> list[list[int]]:
        """Every matching image per text (inverse of `img2txt`)."""
        matches: list[list[int]] = [[] for _ in self.texts]
        for image_index, text_indices in enumerate(self.img2txt):
            for text_index in text_indices:
                matches[text_index].append(image_index)
        return matches


def build_eval_gallery(
    records: Iterable[dict], *, decode: bool = False, counter: BadSampleCounter | None = None
) -> EvalGallery:
    """Build the retrieval gallery from records, merging records that share an `image_id`.

    Texts are de-duplicated by the records' `text_ids` when present (Chinese-CLIP: one query, several images) and
    otherwise kept one per caption occurrence, as the COCO/Flickr protocols count them. Empty captions are counted
    and left out. With `decode=False` the images stay lazy references (decode them with `decode_image` while
    encoding in chunks); with `decode=True` they are decoded now and a bad image is counted and dropped with its
    texts, so that encoding cannot fail later.
    """
    counter = counter if counter is not None else BadSampleCounter()
    images: list[Any] = []
    image_slots: dict[str, int] = {}
    bad_image_ids: set[str] = set()
    texts: list[str] = []
    text_slots: dict[tuple, int] = {}
    img2txt: list[list[int]] = []
    txt2img: list[int] = []
    for record_index, record in enumerate(records):
        image_id = str(record.get("image_id", record_index))
        if image_id in bad_image_ids:
            continue
        if image_id not in image_slots:
            image = record.get("image")
            if decode:
                try:
                    image = decode_image(image)
                except BadSampleError as error:
                    counter.record(image_id, error.reason, error.detail)
                    bad_image_ids.add(image_id)
                    continue
            image_slots[image_id] = len(images)
            images.append(image)
            img2txt.append([])
        image_slot = image_slots[image_id]
        raw_text = record.get("text")
        captions = [raw_text] if isinstance(raw_text, str) or raw_text is None else list(raw_text)
        text_ids = record.get("text_ids")
        for caption_index, caption in enumerate(captions):
            caption = caption.strip() if isinstance(caption, str) else ""
            if not caption:
                counter.record(image_id, "empty_caption", f"caption {caption_index} is empty")
                continue
            key = ("id", str(text_ids[caption_index])) if text_ids else ("at", record_index, caption_index)
            text_slot = text_slots.get(key)
            if text_slot is None:
                text_slot = text_slots[key] = len(texts)
                texts.append(caption)
                txt2img.append(image_slot)
            if text_slot not in img2txt[image_slot]:
                img2txt[image_slot].append(text_slot)
    return EvalGallery(images, texts, img2txt, txt2img)
