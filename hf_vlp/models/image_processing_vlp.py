"""Image processor of hf-vlp models: CLIP preprocessing behind a strict, explicit input check.

Web-scale image-text data holds every kind of image: CMYK JPEGs, palette PNGs with transparency, 16-bit
greyscale scans, empty files. Each is either converted to 8-bit RGB the way a person would expect (alpha
composited on white, 16-bit scaled, not clipped) or refused with an `InvalidImageError` that names which
image and why. The PIL backend is used so that inference does not need torchvision.
Training mode (`augment`): retrieval-safe augmentation, a random resized crop that never flips by default, because
Chinese captions name positions (左边 / 右边) that a mirror image would contradict. The training collator asks for
it; evaluation and inference never run it.
Shipped with saved models (Hub custom code): imports numpy, PIL, torch and transformers only.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling


__all__ = ["InvalidImageError", "VLPImageProcessor", "random_crop_box", "sanitize_image"]

_DIRECT_TO_RGB = {"RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"}
_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_BIT_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class InvalidImageError(ValueError):
    """An input that is not a usable image; `index` says which one of the batch, `reason` why."""

    def __init__(self, index: int, reason: str):
        self.index = index
        self.reason = reason
        super().__init__(f"image {index}: {reason}")


def _white_background(image: Image.Image) -> Image.Image:
    """Composite a transparent image on white: transparent pixels of web images are usually background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8 bits over its range instead of clipping at 255."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
    else:
        peak = 65535.0 if array.max(initial=0.0) <= 65535 else float(array.max())
    scaled = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _array_to_image(array: np.ndarray, index: int) -> Image.Image:
    """Turn an HW, HWC or CHW array (uint8, uint16, bool or float in [0, 1] or [0, 255]) into a PIL image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImageError(index, f"array of shape {tuple(array.shape)} is not an HW, HWC or CHW image")
    if array.size == 0:
        raise InvalidImageError(index, f"image has zero size {tuple(array.shape)}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidImageError(index, "float image contains NaN or infinity")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InvalidImageError(index, f"unsupported pixel dtype {array.dtype}")
    return Image.fromarray(array)


def _open(data: bytes | str | os.PathLike, index: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
    except FileNotFoundError as error:
        raise InvalidImageError(index, f"file not found: {data}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        source = "bytes" if isinstance(data, bytes) else str(data)
        raise InvalidImageError(index, f"cannot decode image from {source[:200]}: {error}") from error
    return image


def sanitize_image(image: Any, index: int = 0) -> Image.Image:
    """Return `image` as an 8-bit RGB PIL image, or raise `InvalidImageError` naming the problem.

    Accepts PIL images, numpy arrays, torch tensors, encoded bytes and local file paths. Converts greyscale,
    palette, CMYK and 16-bit images; composites transparency on white; refuses zero-size images, non-images
    and undecodable data.
    """
    if isinstance(image, (bytes, str, os.PathLike)):
        image = _open(image, index)
    elif hasattr(image, "detach") and hasattr(image, "numpy"):  # torch.Tensor without importing torch
        image = _array_to_image(image.detach().cpu().numpy(), index)
    elif isinstance(image, np.ndarray):
        image = _array_to_image(image, index)
    elif not isinstance(image, Image.Image):
        raise InvalidImageError(
            index, f"expected a PIL image, array, tensor, bytes or path, got {type(image).__name__}"
        )
    if image.width == 0 or image.height == 0:
        raise InvalidImageError(index, f"image has zero size {image.width}x{image.height}")
    if image.mode == "RGB":
        return image
    if image.mode in _WITH_ALPHA or (image.mode == "P" and "transparency" in image.info):
        return _white_background(image)
    if image.mode in _HIGH_BIT_DEPTH:
        return _high_bit_depth_to_rgb(image)
    if image.mode in _DIRECT_TO_RGB or image.mode == "P":
        return image.convert("RGB")
    raise InvalidImageError(index, f"unsupported image mode {image.mode!r}")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random `(left, top, right, bottom)` box covering a `scale` share of the area with aspect in `ratio`.

    The usual random-resized-crop sampling (area uniform in `scale`, log-aspect uniform in `ratio`, up to ten
    tries); when no try fits, the largest centred box of aspect within `ratio`.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_low, log_high, generator))
        crop_w, crop_h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
            top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
            return left, top, left + crop_w, top + crop_h
    aspect = min(max(width / height, ratio[0]), ratio[1])
    crop_w, crop_h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


class VLPImageProcessor(PilBackend):
    """CLIP-style preprocessing (bicubic resize to a square, CLIP mean/std) of sanitised RGB images.

    Training-mode attributes (saved with the processor; used only by `augment`):

    * `train_crop_scale` (default `(0.8, 1.0)`): share of the image's area a random crop covers.
    * `train_crop_ratio` (default `(3/4, 4/3)`): aspect range of the crop.
    * `train_horizontal_flip` (default `False`): mirror half of the images. Off, because captions that say
      左 / 右 would become false; switch it on only for data whose captions never name sides.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]
    train_crop_scale = (0.8, 1.0)
    train_crop_ratio = (3 / 4, 4 / 3)
    train_horizontal_flip = False

    def augment(
        self,
        image: Any,
        crop_scale: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> Image.Image:
        """Training mode: a random resized crop (and a flip only if `train_horizontal_flip`) of one image.

        The crop is taken from the sanitised original and resized by `preprocess` afterwards. Random draws come
        from `generator`, or from torch's global RNG, which the Trainer seeds (and seeds per DataLoader worker),
        so a seeded run sees the same crops. `crop_scale` overrides `train_crop_scale`.
        """
        image = sanitize_image(image)
        scale = tuple(crop_scale if crop_scale is not None else self.train_crop_scale)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
        box = random_crop_box(image.width, image.height, scale, tuple(self.train_crop_ratio), generator)
        if box != (0, 0, image.width, image.height):
            image = image.crop(box)
        if self.train_horizontal_flip and float(torch.rand((), generator=generator)) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def preprocess(self, images, *args, **kwargs):
        """Sanitise every image (see `sanitize_image`), then run the standard pipeline."""
        return super().preprocess(self.sanitize(images), *args, **kwargs)

    def resize(self, image: np.ndarray, size, *args, **kwargs) -> np.ndarray:
        """Skip images already at the target size (PIL would return an identical copy after two conversions):
        training data is often stored at the model's resolution, and this was 16% of the demo loader's time."""
        if size.height and size.width and tuple(image.shape[-2:]) == (size.height, size.width):
            return image
        return super().resize(image, size, *args, **kwargs)

    @staticmethod
    def sanitize(images: Any) -> list[Image.Image]:
        """A flat list of RGB images from one image or a (possibly nested) sequence of them."""
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            flat = [img for item in images for img in (item if isinstance(item, (list, tuple)) else [item])]
        else:
            flat = [images]
        if not flat:
            raise InvalidImageError(0, "no images were given")
        return [sanitize_image(image, index) for index, image in enumerate(flat)]
