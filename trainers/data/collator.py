"""Batch collation: drop bad samples, run the processor, and add the ids a retrieval loss needs.

The collator runs in the DataLoader workers (so do image transforms and the processor), which is why it is the one
that reports how many samples were skipped: the workers' `BadSampleCounter`s are not visible to the trainer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch


__all__ = ["SIDE_CHANNEL_KEYS", "ImageTextCollator", "stable_image_hash"]

# Keys the collator adds for the trainer, not for the model: pop them before `model(**batch)`.
SIDE_CHANNEL_KEYS = ("image_ids", "image_index", "image_hash", "num_skipped_samples")


def stable_image_hash(image_id: str) -> int:
    """A 63-bit integer for an image id, equal in every process (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class ImageTextCollator:
    """Collate `{"image": PIL, "text": str, "image_id": str}` items into model inputs plus side-channel keys.

    Args:
        processor: called as `processor(text=..., images=..., padding=..., truncation=True, max_length=...,
            return_tensors="pt")`, e.g. a `ChineseCLIPProcessor` or the hf-vlp processor.
        max_length: token budget per caption; longer captions are truncated.
        image_transform: optional per-image callable (PIL in, anything the processor accepts out), e.g. training
            augmentation; it runs in the worker, before the processor.
        padding: `"longest"` (default: each batch is padded to its longest caption, so the text tower does not
            run on the padding that short captions leave; gathering across ranks takes uneven lengths) or
            `"max_length"` (every batch `max_length` long: fixed shapes, for compilers that recompile per shape).
        train: training mode: each image goes through the image processor's `augment` (hf-vlp's
            `VLPImageProcessor`: a random resized crop, never a flip by default) before preprocessing. Only for the
            training loader; evaluation must use a collator with `train=False` (the default).
        crop_scale: with `train`, the area share range of the random crop (default: the processor's
            `train_crop_scale`).

    Returns a dict with what the processor produced (`input_ids`, `attention_mask`, `token_type_ids` if the
    tokenizer makes them, `pixel_values`) and the side-channel keys of `SIDE_CHANNEL_KEYS`, which the trainer pops:

    * `image_ids`: list of the items' image ids (strings).
    * `image_index`: LongTensor (B,); items that share an image share an index (first-seen order), so a
      contrastive loss can treat every pair with the same picture as a positive instead of a false negative.
    * `image_hash`: LongTensor (B,) of `stable_image_hash(image_id)`: the same across processes, for the same
      purpose after gathering features from all ranks.
    * `num_skipped_samples`: int, bad samples dropped for this batch: the None items of a map-style dataset plus
      the `num_skipped` that a streaming dataset attaches to its items.

    Works with `remove_unused_columns=False` (it reads only these keys from the items). If every item is bad, the
    batch holds only the side-channel keys (empty `image_ids`, zero-length tensors) and the trainer should skip it.
    """

    def __init__(
        self,
        processor: Callable[..., Any],
        max_length: int = 32,
        image_transform: Callable[[Any], Any] | None = None,
        padding: Literal["longest", "max_length"] = "longest",
        train: bool = False,
        crop_scale: tuple[float, float] | None = None,
    ) -> None:
        self.processor = processor
        self.max_length = max_length
        self.image_transform = image_transform
        self.padding = padding
        self.train = train
        self.crop_scale = crop_scale
        self.augment = None
        if train:
            image_processor = getattr(processor, "image_processor", processor)
            self.augment = getattr(image_processor, "augment", None)
            if self.augment is None:
                raise TypeError(
                    f"ImageTextCollator(train=True) needs an image processor with a training mode (`augment`, as "
                    f"hf-vlp's VLPImageProcessor has); {type(image_processor).__name__} has none: use train=False"
                )

    def for_training(self, crop_scale: tuple[float, float] | None = None) -> ImageTextCollator:
        """The same collator in training mode (augmentation on), for the training loader only."""
        return ImageTextCollator(
            self.processor, self.max_length, self.image_transform, self.padding, train=True, crop_scale=crop_scale
        )

    def __call__(self, items: Sequence[dict | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        num_skipped = len(items) - len(kept) + sum(int(item.get("num_skipped", 0)) for item in kept)
        image_ids = [str(item["image_id"]) for item in kept]
        slots: dict[str, int] = {}
        batch: dict[str, Any] = {}
        if kept:
            images = [item["image"] for item in kept]
            if self.image_transform is not None:
                images = [self.image_transform(image) for image in images]
            if self.augment is not None:
                images = [self.augment(image, crop_scale=self.crop_scale) for image in images]
            encoded = self.processor(
                text=[item["text"] for item in kept],
                images=images,
                padding=self.padding,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            batch.update(encoded)
        batch["image_ids"] = image_ids
        batch["image_index"] = torch.tensor([slots.setdefault(i, len(slots)) for i in image_ids], dtype=torch.long)
        batch["image_hash"] = torch.tensor([stable_image_hash(i) for i in image_ids], dtype=torch.long)
        batch["num_skipped_samples"] = num_skipped
        return batch
