"""What a Space request may contain, checked before any decoding or encoding: images, texts, labels, captions.

Every refusal is a `UserInputError` whose message is Chinese and is shown to the user as it is: a shared CPU Space
must answer a bad upload or an empty query with one sentence, never a stack trace or a stalled queue.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from hf_vlp import InvalidImageError, sanitize_image


__all__ = [
    "MAX_CAPTIONS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_LABELS",
    "MAX_TEXT_CHARS",
    "MAX_TOP_K",
    "MAX_UPLOAD_IMAGES",
    "UserInputError",
    "check_text",
    "fill_template",
    "load_image",
    "parse_captions",
    "parse_labels",
    "require_image",
]

# Limits: what one request may ask of a shared CPU Space.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # read from the header, so a decompression bomb is refused before it is decoded
MAX_UPLOAD_IMAGES = 500
MAX_TEXT_CHARS = 200
MAX_CAPTIONS = 200
MAX_LABELS = 100
MAX_TOP_K = 50

_LABEL_SEPARATORS = re.compile(r"[,，、\n]")


class UserInputError(ValueError):
    """A request the app refuses; the message is Chinese and is shown to the user as it is."""


def _file_name(source: Any) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "图片"


def load_image(source: Any, name: str | None = None) -> Image.Image:
    """An RGB PIL image from a path or PIL image, or `UserInputError` saying (in Chinese) what is wrong with it.

    Size and pixel-count limits are checked on the file and its header before the pixels are decoded.
    """
    name = name or _file_name(source)
    if isinstance(source, Image.Image):
        width, height = source.size
    else:
        try:
            size = os.path.getsize(source)
        except (OSError, TypeError) as error:
            raise UserInputError(f"找不到文件「{name}」。") from error
        if size > MAX_IMAGE_BYTES:
            raise UserInputError(
                f"「{name}」太大（{size / 2**20:.1f} MB），每张图片最多 {MAX_IMAGE_BYTES // 2**20} MB。"
            )
        try:
            with Image.open(source) as probe:
                width, height = probe.size
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
            raise UserInputError(f"「{name}」不是可识别的图片文件，请上传 PNG、JPEG、WebP 等图片。") from error
    if width * height > MAX_IMAGE_PIXELS:
        raise UserInputError(
            f"「{name}」分辨率太大（{width}×{height}），每张图片最多 {MAX_IMAGE_PIXELS // 1_000_000} 百万像素。"
        )
    try:
        return sanitize_image(source)
    except InvalidImageError as error:
        raise UserInputError(f"「{name}」无法作为图片读取：{error.reason}") from error


def require_image(source: Any) -> Image.Image:
    """`load_image` of an upload that may be missing (a request sent without its image)."""
    if source is None or (isinstance(source, str) and not source):
        raise UserInputError("请先上传一张图片。")
    return load_image(source)


def check_text(text: str | None, what: str) -> str:
    """`text` stripped, or `UserInputError` when it is empty or longer than `MAX_TEXT_CHARS`."""
    text = (text or "").strip()
    if not text:
        raise UserInputError(f"请输入{what}。")
    if len(text) > MAX_TEXT_CHARS:
        raise UserInputError(f"{what}太长（{len(text)} 个字），最多 {MAX_TEXT_CHARS} 个字。")
    return text


def parse_labels(text: str | None) -> list[str]:
    """Class names separated by `,` `，` `、` or new lines; blanks dropped, duplicates kept once, order kept."""
    labels = list(dict.fromkeys(part.strip() for part in _LABEL_SEPARATORS.split(text or "") if part.strip()))
    if not labels:
        raise UserInputError("请输入至少一个类别名称，用逗号分隔，例如：猫，狗，汽车。")
    if len(labels) > MAX_LABELS:
        raise UserInputError(f"类别太多（{len(labels)} 个），最多 {MAX_LABELS} 个。")
    for label in labels:
        check_text(label, "类别名称")
    return labels


def parse_captions(text: str | None) -> list[str]:
    """Candidate captions, one per line; blank lines dropped, duplicates kept once."""
    captions = list(dict.fromkeys(line.strip() for line in (text or "").splitlines() if line.strip()))
    if not captions:
        raise UserInputError("请输入候选文本，每行一条。")
    if len(captions) > MAX_CAPTIONS:
        raise UserInputError(f"候选文本太多（{len(captions)} 条），最多 {MAX_CAPTIONS} 条。")
    for caption in captions:
        check_text(caption, "候选文本")
    return captions


def fill_template(template: str | None, label: str) -> str:
    """`template` with `{}` replaced by `label`; plain replacement so braces in labels cannot break formatting."""
    template = check_text(template, "提示模板")
    if "{}" not in template:
        raise UserInputError("提示模板需要包含 {} 作为类别名称的位置，例如：一张{}的照片。")
    return template.replace("{}", label)
