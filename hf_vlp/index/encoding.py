"""The model side of the index: loading the model an index names, encoding queries and gallery items with it, and
the embedding-space fingerprint that refuses a query model which embeds into another space."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import IndexModelMismatchError


__all__ = [
    "check_fingerprint",
    "embedding_fingerprint",
    "encode_images",
    "encode_texts",
    "load_model_and_processor",
    "model_device",
]

# Two embeddings of the fingerprint probe that differ by more than this belong to different embedding spaces.
FINGERPRINT_TOLERANCE = 1e-3
_PROBE_TEXT = "一张照片：左边是一个红色的圆形，右边是两个蓝色的三角形"


def load_model_and_processor(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """`AutoModel` + `AutoProcessor` of a saved hf-vlp folder or Hub id, in eval mode."""
    from transformers import AutoModel, AutoProcessor

    from .. import auto as _auto  # noqa: F401  (registers the hf-vlp Auto classes)

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    model = AutoModel.from_pretrained(name_or_path, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    return model, processor


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def encode_texts(model, processor, texts: Sequence[str]):
    """`model.encode_text` of a batch of strings (the model's retrieval embeddings, normalised)."""
    inputs = processor(text=list(texts))
    device = model_device(model)
    names = ("input_ids", "attention_mask", "token_type_ids")
    return model.encode_text(**{name: inputs[name].to(device) for name in names if name in inputs})


@torch.inference_mode()
def encode_images(model, processor, images: Sequence[Any] | None = None, pixel_values: torch.Tensor | None = None):
    """`model.encode_image` of images (PIL images, paths, bytes or arrays) or of ready `pixel_values`."""
    if pixel_values is None:
        pixel_values = processor(images=list(images))["pixel_values"]
    return model.encode_image(pixel_values.to(model_device(model)))


def _probe_image() -> np.ndarray:
    """A deterministic 64x64 RGB test card (gradients and a checkerboard): no file, no randomness."""
    y, x = np.mgrid[0:64, 0:64]
    card = np.stack([x * 4, y * 4, ((x // 8 + y // 8) % 2) * 255], axis=-1)
    return card.astype(np.uint8)


def embedding_fingerprint(model, processor) -> dict[str, Any]:
    """The model's embeddings of a fixed probe text and probe image, plus a short hash of them.

    Why: an index is only searchable with the model (and preprocessing) it was built with. Names and revisions can
    be re-used for different weights, so the index records where the embeddings *land*: a query model whose probe
    embeddings differ by more than `FINGERPRINT_TOLERANCE` (in any coordinate) embeds into another space. The
    tolerance absorbs float noise across BLAS builds and ONNX-vs-PyTorch, not a different checkpoint.
    """
    text = encode_texts(model, processor, [_PROBE_TEXT]).embeds[0].float().cpu().numpy()
    image = encode_images(model, processor, [_probe_image()]).embeds[0].float().cpu().numpy()
    digest = hashlib.sha256(np.round(np.concatenate([text, image]), 3).astype(np.float32).tobytes()).hexdigest()
    return {"sha256": digest[:16], "text": text.tolist(), "image": image.tolist()}


def check_fingerprint(recorded: dict[str, Any], model, processor, index_dir: str) -> None:
    current = embedding_fingerprint(model, processor)
    for modality in ("text", "image"):
        expected, got = np.asarray(recorded[modality]), np.asarray(current[modality])
        if expected.shape != got.shape or float(np.abs(expected - got).max()) > FINGERPRINT_TOLERANCE:
            raise IndexModelMismatchError(
                f"the query model embeds into a different space than the model index {index_dir} was built with "
                f"(fingerprint {recorded['sha256']}, this model {current['sha256']}); search it with that model "
                "or rebuild the index with `hf-vlp index build --model YOUR_MODEL`"
            )
