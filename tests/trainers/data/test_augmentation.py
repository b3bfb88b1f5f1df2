"""Retrieval-safe training augmentation: random resized crops, never a flip by default, only in the training
loader, and the same crops under the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vlp import VLPImageProcessor, VLPProcessor
from hf_vlp.models.image_processing_vlp import random_crop_box
from tests.trainers.helpers import small_model, training_args
from trainers import VLPTrainer
from trainers.data import ImageTextCollator, ImageTextDataset, demo_records


def left_red_right_blue(width: int = 64, height: int = 48) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def test_crops_cover_the_requested_area_share_and_follow_the_seed():
    for seed in range(20):
        left, top, right, bottom = random_crop_box(
            100, 80, (0.5, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed)
        )
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 80
        assert 0.45 <= (right - left) * (bottom - top) / 8000 <= 1.0
    boxes = [random_crop_box(100, 80, (0.5, 1.0), (0.75, 1.34), torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert boxes[0] == boxes[1] != boxes[2]


def mirrored(crop: np.ndarray) -> bool:
    """Blue at the left edge and red at the right: only a mirror image of `left_red_right_blue` looks so."""
    return crop[:, 0, 2].min() == 255 and crop[:, -1, 0].min() == 255


def test_augment_never_mirrors_by_default_so_left_stays_left():
    processor = VLPImageProcessor(size={"height": 16, "width": 16})
    crops = [
        np.asarray(processor.augment(left_red_right_blue(), generator=torch.Generator().manual_seed(seed)))
        for seed in range(30)
    ]
    assert not any(mirrored(crop) for crop in crops)
    assert any(crop.shape != (48, 64, 3) for crop in crops)  # it does crop
    flipping = VLPImageProcessor(size={"height": 16, "width": 16}, train_horizontal_flip=True, train_crop_scale=(1, 1))
    flips = [
        mirrored(np.asarray(flipping.augment(left_red_right_blue(), generator=torch.Generator().manual_seed(s))))
        for s in range(20)
    ]
    assert any(flips) and not all(flips)  # the opt-in flip mirrors about half of the images


def batch_items() -> list[dict]:
    return [{"image": left_red_right_blue(), "text": "左边是红色，右边是蓝色", "image_id": str(i)} for i in range(4)]


def test_training_collator_augments_deterministically_and_the_eval_collator_never_does(tiny_processor):
    processor = VLPProcessor(VLPImageProcessor(size={"height": 16, "width": 16}), tiny_processor.tokenizer, 16)
    plain = ImageTextCollator(processor, max_length=16)
    training = plain.for_training(crop_scale=(0.3, 0.6))
    torch.manual_seed(0)
    first = training(batch_items())["pixel_values"]
    torch.manual_seed(0)
    again = training(batch_items())["pixel_values"]
    torch.manual_seed(1)
    other = training(batch_items())["pixel_values"]
    evaluated = plain(batch_items())["pixel_values"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # a fresh crop per image
    assert not torch.equal(first[0], evaluated[0])
    assert torch.equal(evaluated, plain(batch_items())["pixel_values"])  # eval: the whole image, every time
    assert torch.equal(evaluated[0], evaluated[1])


def test_collator_training_mode_needs_a_processor_with_one(processor):
    with pytest.raises(TypeError, match="training mode.*use train=False"):
        ImageTextCollator(processor, train=True)  # ChineseCLIPProcessor has no `augment`


def test_trainer_augments_only_the_training_loader(tmp_path, small_processor):
    args = training_args(tmp_path, train_augmentation=True, train_crop_min_scale=0.5)
    dataset = ImageTextDataset(demo_records(8, image_size=32))
    trainer = VLPTrainer(model=small_model(), args=args, train_dataset=dataset, processing_class=small_processor)
    collate = trainer.get_train_dataloader().collate_fn
    assert collate.train and collate.crop_scale == (0.5, 1.0)
    assert not trainer.data_collator.train  # evaluation and GRIT embeddings keep whole images
    off = VLPTrainer(
        model=small_model(), args=training_args(tmp_path), train_dataset=dataset, processing_class=small_processor
    )
    assert not off.get_train_dataloader().collate_fn.train
    with pytest.raises(ValueError, match="train_crop_min_scale must be in"):
        training_args(tmp_path, train_augmentation=True, train_crop_min_scale=0.0)
