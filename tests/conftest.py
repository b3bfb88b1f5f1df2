"""Shared fixtures: tiny models and processors built in the test, no network."""

from __future__ import annotations

import os

import pytest
import torch


pytest_plugins = ["tests.utils.hub_server"]  # the `local_hub` fixture: a loopback Hub for push/download tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models run fastest single-threaded, and CI shares two cores


@pytest.fixture(scope="session")
def tiny_processor():
    """The tiny preset's processor: 64px images and the offline Chinese tokenizer."""
    import hf_vlp

    return hf_vlp.processor_for_preset("tiny")


@pytest.fixture
def tiny_dual_config():
    """A small dual-encoder config (2 layers, width 32, 32px images, no dropout) for fast unit tests."""
    from tests.trainers.helpers import small_config

    return small_config()


@pytest.fixture(scope="session")
def small_processor(tiny_processor):
    """The processor of `tiny_dual_config`: 32px images, the offline Chinese tokenizer."""
    from hf_vlp import VLPImageProcessor, VLPProcessor

    return VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}), tiny_processor.tokenizer, max_length=32)


@pytest.fixture
def tiny_batch(small_processor):
    """Four captions and four solid-colour 32px images, processed as the model expects."""
    from PIL import Image

    processor = small_processor
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    captions = ["一个红色的圆形", "一个绿色的正方形", "两个蓝色的三角形", "左边是一个黄色的星形"]
    images = [Image.new("RGB", (40, 40), c) for c in colours]
    return dict(processor(text=captions, images=images))
