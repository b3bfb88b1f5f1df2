"""hf-vlp Gradio Space: Chinese text-to-image search, image-to-text ranking and zero-shot classification.

Runs as a Hugging Face Space (`python app.py`, model from the `HF_VLP_MODEL` / `HF_VLP_REVISION` variables) and
locally through `hf-vlp demo` (`launch_demo`). It uses hf_vlp's public API only (`AutoModel` / `AutoProcessor`,
`encode_text`, `encode_image`, `similarity`, `get_logit_scale`, `hf_vlp.retrieval`), so any hf-vlp model family
works, loaded from a local folder or from the Hub with its shipped code.

This file is loaded by path, never imported as `spaces.app`: Spaces have their own `spaces` module, so this
folder is not a package. Its one sibling, `demo_gallery.py`, is loaded the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoModel, AutoProcessor

import hf_vlp
from hf_vlp.retrieval import chunked_topk, rerank_topk


__all__ = [
    "BUILTIN_GALLERY",
    "DEFAULT_GALLERY_DIR",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_TEMPLATE",
    "Gallery",
    "GalleryIndex",
    "ModelNotFoundError",
    "SearchResult",
    "UserInputError",
    "VLPSpace",
    "build_demo",
    "builtin_gallery",
    "create_space",
    "default_gallery",
    "folder_gallery",
    "launch_demo",
    "load_image",
    "load_model",
    "main",
    "parse_captions",
    "parse_labels",
    "resolve_model",
    "upload_gallery",
]

logger = logging.getLogger("hf_vlp.space")

# Where `hf-vlp pretrain --recipe demo` leaves its model (one place to change), and where the Space looks for that
# job's eval images (an imagefolder: PNGs + metadata.jsonl); without them it shows its own built-in scenes.
DEFAULT_MODEL_DIR = "./hf_vlp_demo_output/model"
DEFAULT_GALLERY_DIR = "./hf_vlp_demo_output/eval"
ENV_MODEL = "HF_VLP_MODEL"
ENV_REVISION = "HF_VLP_REVISION"
ENV_GALLERY = "HF_VLP_GALLERY"
BUILTIN_GALLERY = "builtin"  # `--gallery builtin`: the Space's own scenes even when the demo eval set exists

DEFAULT_TEMPLATE = "一张{}的照片。"
DEFAULT_LABELS = "圆形，正方形，三角形，星形"
DEFAULT_TOP_K = 8

# Limits: what one request may ask of a shared CPU Space. Each is checked before any decoding or encoding.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # read from the header, so a decompression bomb is refused before it is decoded
MAX_UPLOAD_IMAGES = 500
MAX_FOLDER_IMAGES = 20_000
MAX_TEXT_CHARS = 200
MAX_CAPTIONS = 200
MAX_LABELS = 100
MAX_TOP_K = 50
SERVER_MAX_FILE_SIZE = "50mb"  # Gradio's own hard cap on an upload; ours above gives the Chinese message first

ENCODE_BATCH_SIZE = 64
GALLERY_CACHE_SIZE = 4  # galleries whose embeddings are kept (the built-in one and a few uploads)
SIMILARITY_CHUNK = 1024  # gallery rows scored at once by a token-wise model's `similarity`
CONCURRENCY_LIMIT = 2  # requests run at once; the rest wait in Gradio's queue
QUEUE_MAX_SIZE = 64

# Fusion models: their public re-ranking method (`FusionEncoderForRetrieval.rerank_scores(image, text)`: aligned
# encoder outputs in, one ITM log-odds per pair out), how many captions it re-scores in 以图搜文, and how its score is
# combined with the contrastive one (`hf_vlp.retrieval.rerank_topk`; "sum" = LAVIS, the default of `model.rank` and
# of the training side's evaluation, so the Space shows the order that evaluation reports).
RERANK_HOOK = "rerank_scores"
RERANK_TOP_K = 16
RERANK_COMBINE = "sum"

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_LABEL_SEPARATORS = re.compile(r"[,，、\n]")


def _load_sibling(name: str):
    """Import `<name>.py` next to this file by path (see the module docstring for why not as a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"hf_vlp_space_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_gallery = _load_sibling("demo_gallery")


# ------------------------------------------------------------------------------------------------ errors


class UserInputError(ValueError):
    """A request the app refuses; the message is Chinese and is shown to the user as it is."""


class ModelNotFoundError(FileNotFoundError):
    """No model to serve: the message says how to get one."""


# ------------------------------------------------------------------------------------------------ model


def resolve_model(model: str | None = None, revision: str | None = None) -> tuple[str, str | None, bool]:
    """`(source, revision, is_local)` from the argument, else `HF_VLP_MODEL`, else the demo job's output folder.

    A name that is an existing folder is local; a name that looks like a path but is missing is an error (rather
    than a confusing Hub lookup); anything else is a Hub repo id, pinned by `revision` / `HF_VLP_REVISION`.
    """
    model = model or os.environ.get(ENV_MODEL) or None
    revision = revision or os.environ.get(ENV_REVISION) or None
    if model is None:
        if os.path.isdir(DEFAULT_MODEL_DIR):
            return os.path.abspath(DEFAULT_MODEL_DIR), None, True
        raise ModelNotFoundError(
            f"还没有可用的模型 / No model yet: {DEFAULT_MODEL_DIR} does not exist.\n"
            "Train the demo model first with `hf-vlp pretrain --recipe demo`, or pass a model folder or Hub id "
            f"(`hf-vlp demo --model <folder-or-repo-id> --revision <commit>`, or set {ENV_MODEL} / {ENV_REVISION})."
        )
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded), None, True
    # A Hub id is `name` or `owner/name`; anything else that is not a folder was meant as a path.
    looks_like_path = (
        expanded.startswith((".", "/")) or expanded.count("/") > 1 or (os.sep != "/" and os.sep in expanded)
    )
    if looks_like_path:
        raise ModelNotFoundError(f"Model folder not found: {model}")
    return model, revision, False


def load_model(model: str | None = None, revision: str | None = None, device: str | None = None):
    """Load `(model, processor, description)` for serving, in eval mode on `device` (CUDA when there is one).

    Hub models run their shipped code (`trust_remote_code`), so an unpinned revision is warned about: the code
    on the main branch may change under a running Space. Local folders use the installed hf_vlp classes.
    """
    source, revision, is_local = resolve_model(model, revision)
    if not is_local and revision is None:
        logger.warning(
            "Loading %s with trust_remote_code from its default branch: pin a commit with --revision or %s.",
            source,
            ENV_REVISION,
        )
    hub_kwargs = {} if is_local else {"revision": revision}
    try:
        vlp_model = AutoModel.from_pretrained(source, trust_remote_code=True, **hub_kwargs)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True, **hub_kwargs)
    except OSError as error:
        raise ModelNotFoundError(f"Cannot load an hf-vlp model and processor from {source!r}: {error}") from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vlp_model.to(device).eval()
    description = source if is_local else f"{source}@{revision or 'main'}"
    return vlp_model, processor, description


# ------------------------------------------------------------------------------------------------ images


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
        return hf_vlp.sanitize_image(source)
    except hf_vlp.InvalidImageError as error:
        raise UserInputError(f"「{name}」无法作为图片读取：{error.reason}") from error


def _thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    """A display copy no larger than `size`: the result gallery never ships full-size photos to the browser."""
    if max(image.size) <= size:
        return image
    copy = image.copy()
    copy.thumbnail((size, size))
    return copy


# ------------------------------------------------------------------------------------------------ galleries


def _digest_images(images: Sequence[Any]) -> str:
    """A content key of a gallery: the bytes of its files, or the pixels of in-memory images, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        if isinstance(image, Image.Image):
            digest.update(f"{image.mode}:{image.size}".encode())
            digest.update(image.tobytes())
        else:
            with open(image, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class Gallery:
    """Images to search (PIL images or file paths), their captions, and a key that changes with their content."""

    name: str
    images: tuple[Any, ...]
    captions: tuple[str, ...]
    key: str

    @classmethod
    def create(cls, name: str, images: Sequence[Any], captions: Sequence[str]) -> Gallery:
        return cls(name, tuple(images), tuple(captions), _digest_images(images))

    def __len__(self) -> int:
        return len(self.images)


def builtin_gallery(variants: int = 1) -> Gallery:
    """The Space's own scenes (`demo_gallery.py`): 20 coloured shapes per variant, no files needed."""
    items = demo_gallery.demo_gallery(variants=variants)
    return Gallery.create("内置示例图库", [image for image, _ in items], [caption for _, caption in items])


def folder_gallery(folder: str | os.PathLike, name: str | None = None) -> Gallery:
    """A folder of images: an imagefolder with `metadata.jsonl` (`file_name`, `text`) such as the demo job's eval
    split, or else every image file in it (captioned by file name). At most `MAX_FOLDER_IMAGES` are taken."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    paths: list[Path] = []
    captions: list[str] = []
    if metadata.is_file():
        with open(metadata, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                row = json.loads(line)
                text = row.get("text") or row.get("captions") or ""
                paths.append(folder / row["file_name"])
                captions.append(text[0] if isinstance(text, list) else str(text))
    else:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        captions = [p.name for p in paths]
    if not paths:
        raise FileNotFoundError(f"no images in gallery folder {folder}")
    if len(paths) > MAX_FOLDER_IMAGES:
        logger.warning("Gallery %s has %d images; using the first %d.", folder, len(paths), MAX_FOLDER_IMAGES)
        paths, captions = paths[:MAX_FOLDER_IMAGES], captions[:MAX_FOLDER_IMAGES]
    return Gallery.create(name or folder.name, [str(p) for p in paths], captions)


def default_gallery(gallery: str | os.PathLike | None = None) -> Gallery:
    """The argument, else `HF_VLP_GALLERY`, else the demo job's eval images if present, else the built-in scenes.

    `"builtin"` asks for the built-in scenes explicitly; anything else is an image folder.
    """
    folder = gallery or os.environ.get(ENV_GALLERY) or None
    if folder == BUILTIN_GALLERY:
        return builtin_gallery()
    if folder is not None:
        return folder_gallery(folder)
    if os.path.isfile(os.path.join(DEFAULT_GALLERY_DIR, "metadata.jsonl")):
        return folder_gallery(DEFAULT_GALLERY_DIR, name="示例评测图库")
    return builtin_gallery()


def upload_gallery(paths: Sequence[str]) -> Gallery:
    """A gallery of user uploads (count and file size checked here; contents when they are encoded)."""
    if len(paths) > MAX_UPLOAD_IMAGES:
        raise UserInputError(f"一次最多上传 {MAX_UPLOAD_IMAGES} 张图片，收到 {len(paths)} 个文件。")
    for path in paths:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise UserInputError(
                f"「{Path(path).name}」太大（{os.path.getsize(path) / 2**20:.1f} MB），"
                f"每张图片最多 {MAX_IMAGE_BYTES // 2**20} MB。"
            )
    return Gallery.create("上传的图片", list(paths), [Path(p).name for p in paths])


# ------------------------------------------------------------------------------------------------ text input


def _check_text(text: str, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise UserInputError(f"请输入{what}。")
    if len(text) > MAX_TEXT_CHARS:
        raise UserInputError(f"{what}太长（{len(text)} 个字），最多 {MAX_TEXT_CHARS} 个字。")
    return text


def parse_labels(text: str) -> list[str]:
    """Class names separated by `,` `，` `、` or new lines; blanks dropped, duplicates kept once, order kept."""
    labels = list(dict.fromkeys(part.strip() for part in _LABEL_SEPARATORS.split(text or "") if part.strip()))
    if not labels:
        raise UserInputError("请输入至少一个类别名称，用逗号分隔，例如：猫，狗，汽车。")
    if len(labels) > MAX_LABELS:
        raise UserInputError(f"类别太多（{len(labels)} 个），最多 {MAX_LABELS} 个。")
    for label in labels:
        _check_text(label, "类别名称")
    return labels


def parse_captions(text: str) -> list[str]:
    """Candidate captions, one per line; blank lines dropped, duplicates kept once."""
    captions = list(dict.fromkeys(line.strip() for line in (text or "").splitlines() if line.strip()))
    if not captions:
        raise UserInputError("请输入候选文本，每行一条。")
    if len(captions) > MAX_CAPTIONS:
        raise UserInputError(f"候选文本太多（{len(captions)} 条），最多 {MAX_CAPTIONS} 条。")
    for caption in captions:
        _check_text(caption, "候选文本")
    return captions


def _fill_template(template: str, label: str) -> str:
    """`template` with `{}` replaced by `label`; plain replacement so braces in labels cannot break formatting."""
    return template.replace("{}", label)


# ------------------------------------------------------------------------------------------------ core


def _tensor_fields(output) -> dict[str, torch.Tensor]:
    """The tensor fields of a model output (`RetrievalEmbeddings`, or a fusion model's richer encoder output)."""
    return {name: value for name, value in output.items() if isinstance(value, torch.Tensor)}


def _concat_outputs(parts: list):
    """Concatenate encoder outputs along the batch, in the model's own output class (so remote code works too)."""
    names = _tensor_fields(parts[0])
    return type(parts[0])(**{name: torch.cat([_tensor_fields(part)[name] for part in parts]) for name in names})


def _take(output, index: torch.Tensor | slice):
    """Rows `index` of every tensor field of an encoder output."""
    return type(output)(**{name: value[index] for name, value in _tensor_fields(output).items()})


@dataclass
class GalleryIndex:
    """The cached embeddings of one gallery: rows for the images that could be read, and the names of the rest."""

    embeddings: Any  # what the model's `encode_image` returned, concatenated, on the model's device
    positions: torch.Tensor  # gallery index of each embedding row
    skipped: list[str]


@dataclass
class SearchResult:
    """`(gallery index, score)` pairs, best first; `reranked` when the cross encoder re-ranked them."""

    ranked: list[tuple[int, float]]
    reranked: list[tuple[int, float]] | None
    index: GalleryIndex


class VLPSpace:
    """The app's logic, independent of Gradio: retrieval, ranking and classification with one model.

    Gallery embeddings are computed once per gallery content (`Gallery.key`) and kept in a small LRU cache, so
    a query only encodes its text; encoding runs in batches, and the search uses `chunked_topk` (or the model's
    own `similarity` in chunks for token-wise models) so a gallery of thousands of images stays interactive.

    Fusion models (those with `rerank_scores(image, text)`) can also re-rank the top-k with their cross encoder:
    `hf_vlp.retrieval.rerank_topk` over the cached gallery, ITM log-odds + contrastive score.
    """

    def __init__(
        self,
        model,
        processor,
        gallery: Gallery,
        model_name: str = "",
        batch_size: int = ENCODE_BATCH_SIZE,
        cache_size: int = GALLERY_CACHE_SIZE,
    ):
        self.model = model
        self.processor = processor
        self.gallery = gallery
        self.model_name = model_name
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, GalleryIndex] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._encoding: dict[str, threading.Lock] = {}  # gallery key -> lock held while it is being encoded

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def can_rerank(self) -> bool:
        """Whether the model has a cross encoder re-ranking hook (fusion models)."""
        return callable(getattr(self.model, RERANK_HOOK, None))

    @property
    def _token_wise(self) -> bool:
        """Token-wise (FILIP) similarity is not an inner product of `embeds`, so it is scored by the model."""
        return getattr(self.model.config, "similarity", "global") == "token_wise"

    # ---------------------------------------------------------------- encoding
    def encode_texts(self, texts: list[str]):
        """Encoder outputs of `texts` (one tokenizer call so that token-level outputs share a length)."""
        batch = self.processor(text=texts)
        names = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {name: batch[name].to(self.device) for name in names if batch.get(name) is not None}
        with torch.inference_mode():
            return self.model.encode_text(**inputs)

    def encode_images(self, images: list[Image.Image]):
        """Encoder outputs of RGB images, computed in batches of `batch_size`."""
        parts = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = self.processor(images=images[start : start + self.batch_size])["pixel_values"]
                parts.append(self.model.encode_image(pixel_values=pixels.to(self.device)))
        return _concat_outputs(parts)

    def gallery_index(self, gallery: Gallery) -> GalleryIndex:
        """The gallery's embeddings, from the cache when the same content was encoded before.

        A lock per gallery key: users asking for the same new gallery at once share one encoding, while searches
        in galleries already cached never wait behind someone's large upload being encoded.
        """
        with self._cache_lock:
            cached = self._cache.get(gallery.key)
            if cached is not None:
                self._cache.move_to_end(gallery.key)
                return cached
            key_lock = self._encoding.setdefault(gallery.key, threading.Lock())
        with key_lock:
            try:
                with self._cache_lock:
                    cached = self._cache.get(gallery.key)  # encoded by whoever held the key lock before us
                if cached is not None:
                    return cached
                index = self._encode_gallery(gallery)
                with self._cache_lock:
                    self._cache[gallery.key] = index
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                return index
            finally:
                with self._cache_lock:
                    self._encoding.pop(gallery.key, None)

    def _encode_gallery(self, gallery: Gallery) -> GalleryIndex:
        """Encode a gallery in batches, skipping (and naming) unreadable images rather than failing on them: one
        bad upload should not lose the other hundred."""
        parts, positions, skipped = [], [], []
        for start in range(0, len(gallery), self.batch_size):
            images = []
            for position in range(start, min(start + self.batch_size, len(gallery))):
                try:
                    images.append(load_image(gallery.images[position], gallery.captions[position]))
                except UserInputError:
                    skipped.append(gallery.captions[position])
                    continue
                positions.append(position)
            if images:
                parts.append(self.encode_images(images))
        if not positions:
            raise UserInputError(f"图库里没有可用的图片：{_name_list(skipped)}不是可识别的图片文件。")
        return GalleryIndex(_concat_outputs(parts), torch.tensor(positions), skipped)

    # ---------------------------------------------------------------- scoring
    def _topk(self, text, gallery, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k gallery rows for one encoded query text: `(scores, rows)`, best first, ties to the lower row."""
        if not self._token_wise:
            scores, rows = chunked_topk(text.embeds.float(), gallery.embeds.float(), k)
            return scores[0], rows[0]
        scores = []
        with torch.inference_mode():
            for start in range(0, gallery.embeds.shape[0], SIMILARITY_CHUNK):
                block = _take(gallery, slice(start, start + SIMILARITY_CHUNK))
                scores.append(self.model.similarity(block, text)[1][:, 0].float())
        values, rows = torch.cat(scores).sort(descending=True, stable=True)
        return values[:k], rows[:k]

    def _rerank(self, images, texts, scores, rows, query_is_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-score one query's top-k `rows` with the model's cross encoder; returns the new `(scores, rows)`."""
        hook = getattr(self.model, RERANK_HOOK)

        def pair_scorer(query_index: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
            image_rows, text_rows = (
                (query_index, candidate_index) if query_is_image else (candidate_index, query_index)
            )
            return hook(_take(images, image_rows), _take(texts, text_rows))

        scores, rows = rerank_topk(None, rows[None], scores[None], pair_scorer, combine=RERANK_COMBINE)
        return scores[0], rows[0]

    # ---------------------------------------------------------------- tasks
    def search(self, query: str, gallery: Gallery, k: int, rerank: bool = False) -> SearchResult:
        """The `k` gallery images best matching a Chinese query (cached gallery embeddings, one text encoding)."""
        query = _check_text(query, "要搜索的文字")
        index = self.gallery_index(gallery)
        text = self.encode_texts([query])
        k = max(1, min(int(k), MAX_TOP_K))
        scores, rows = self._topk(text, index.embeddings, k)
        ranked = [(int(index.positions[r]), float(s)) for r, s in zip(rows.tolist(), scores)]
        reranked = None
        if rerank and self.can_rerank:
            scores, rows = self._rerank(index.embeddings, text, scores, rows, query_is_image=False)
            reranked = [(int(index.positions[r]), float(s)) for r, s in zip(rows.tolist(), scores)]
        return SearchResult(ranked, reranked, index)

    def rank_captions(self, image: Image.Image, captions: list[str], rerank: bool = False):
        """Candidate captions of an image, best first: `(ranked, reranked)`.

        `ranked` lists `(caption, similarity, softmax probability)` for every caption; `reranked` (fusion models,
        when asked) lists `(caption, cross-encoder score, contrastive rank)` for the contrastive top `RERANK_TOP_K`.
        """
        image_out = self.encode_images([image])
        text_out = self.encode_texts(captions)
        sim = self._similarity_row(image_out, text_out)
        probs = (self._logit_scale() * sim).softmax(-1)
        order = sim.argsort(descending=True, stable=True).tolist()
        ranked = [(captions[i], float(sim[i]), float(probs[i])) for i in order]
        reranked = None
        if rerank and self.can_rerank:
            top = torch.tensor(order[:RERANK_TOP_K])
            scores, rows = self._rerank(image_out, text_out, sim[top], top, query_is_image=True)
            reranked = [(captions[r], float(s), order.index(r) + 1) for r, s in zip(rows.tolist(), scores)]
        return ranked, reranked

    def classify(self, image: Image.Image, labels: list[str], template: str) -> dict[str, float]:
        """Zero-shot class probabilities (CLIP: softmax of the scaled similarity to each filled-in prompt)."""
        template = (template or "").strip()
        if "{}" not in template:
            raise UserInputError("提示模板需要包含 {} 作为类别名称的位置，例如：一张{}的照片。")
        _check_text(template, "提示模板")
        prompts = [_fill_template(template, label) for label in labels]
        sim = self._similarity_row(self.encode_images([image]), self.encode_texts(prompts))
        probs = (self._logit_scale() * sim).softmax(-1)
        return {label: float(p) for label, p in zip(labels, probs)}

    def _logit_scale(self) -> float:
        """The model's learned temperature: probabilities as the model was trained to give them."""
        with torch.no_grad():
            return float(self.model.get_logit_scale())

    def _similarity_row(self, image_out, text_out) -> torch.Tensor:
        """Similarity of one image with every text, on the CPU."""
        with torch.inference_mode():
            sim_i2t, _ = self.model.similarity(image_out, text_out)
        return sim_i2t[0].float().cpu()

    # ---------------------------------------------------------------- UI handlers (never raise)
    def ui_search(self, query: str, top_k: float, files: list[str] | None, rerank: bool = False):
        """Gradio handler of 以文搜图: (result gallery, re-ranked gallery, status markdown)."""
        try:
            started = time.perf_counter()
            gallery = upload_gallery(files) if files else self.gallery
            result = self.search(query, gallery, int(top_k), rerank=bool(rerank))
            status = (
                f"图库：{gallery.name}（{len(result.index.positions)} 张）· "
                f"用时 {time.perf_counter() - started:.2f} 秒" + _skipped_note(result.index.skipped)
            )
            reranked = _gallery_items(gallery, result.reranked) if result.reranked is not None else []
            return _gallery_items(gallery, result.ranked), reranked, status
        except Exception as error:  # noqa: BLE001 - every failure becomes a message, never a stack trace
            return [], [], _failure(error)

    def ui_upload(self, files: list[str] | None) -> str:
        """Gradio handler of the gallery upload: check and encode the uploads now, so that searching is instant."""
        if not files:
            return f"图库：{self.gallery.name}（{len(self.gallery)} 张）"
        try:
            index = self.gallery_index(upload_gallery(files))
            return f"已载入上传的 {len(index.positions)} 张图片作为图库。" + _skipped_note(index.skipped)
        except Exception as error:  # noqa: BLE001
            return _failure(error)

    def ui_rank_captions(self, image_path: str | None, captions_text: str, rerank: bool = False):
        """Gradio handler of 以图搜文: (ranking rows, re-ranked rows, status markdown)."""
        try:
            image = _require_image(image_path)
            ranked, reranked = self.rank_captions(image, parse_captions(captions_text), rerank=bool(rerank))
            rows = [[rank, text, round(sim, 4), round(prob, 4)] for rank, (text, sim, prob) in enumerate(ranked, 1)]
            rerank_rows = [
                [rank, text, round(score, 4), before] for rank, (text, score, before) in enumerate(reranked or [], 1)
            ]
            return rows, rerank_rows, f"最匹配的文本：**{(reranked or ranked)[0][0]}**"
        except Exception as error:  # noqa: BLE001
            return [], [], _failure(error)

    def ui_classify(self, image_path: str | None, labels_text: str, template: str):
        """Gradio handler of 零样本分类: (label probabilities, status markdown)."""
        try:
            image = _require_image(image_path)
            probs = self.classify(image, parse_labels(labels_text), template)
            best = max(probs, key=probs.get)
            return probs, f"预测类别：**{best}**（{probs[best]:.1%}）"
        except Exception as error:  # noqa: BLE001
            return None, _failure(error)


def _gallery_items(gallery: Gallery, results: list[tuple[int, float]]) -> list[tuple[Image.Image, str]]:
    """Result thumbnails captioned `rank · score · caption` (the score stays visible when
    a long caption is cut) for `gr.Gallery`."""
    return [
        (_thumbnail(load_image(gallery.images[p], gallery.captions[p])), f"{rank} · {s:.3f} · {gallery.captions[p]}")
        for rank, (p, s) in enumerate(results, start=1)
    ]


def _require_image(image_path: str | None) -> Image.Image:
    if not image_path:
        raise UserInputError("请先上传一张图片。")
    return load_image(image_path)


def _name_list(names: list[str], limit: int = 5) -> str:
    shown = "、".join(f"「{name}」" for name in names[:limit])
    return shown + (f"等 {len(names)} 个文件" if len(names) > limit else "")


def _skipped_note(skipped: list[str]) -> str:
    if not skipped:
        return ""
    note = f"已跳过 {len(skipped)} 个无法识别的文件：{_name_list(skipped)}。"
    gr.Warning(note, title="提示")
    return "\n\n⚠️ " + note


def _failure(error: Exception) -> str:
    """The status text of a failed request; user mistakes are shown as they are, anything else is logged."""
    if isinstance(error, UserInputError):
        message = str(error)
    else:
        logger.exception("request failed")
        message = "处理请求时出错了，请换一张图片或换一种说法再试。"
    gr.Warning(message, title="提示")
    return "⚠️ " + message


# ------------------------------------------------------------------------------------------------ UI


def _query_image(elem_id: str) -> gr.Image:
    """An image input that hands an unreadable upload to the app instead of failing inside Gradio.

    Gradio's own preprocessing opens the file with PIL and, on a broken file, fails with a bare "Error" before the
    app runs; here the uploaded file's path is passed on instead, and `load_image` turns it into the same Chinese
    message as every other bad input. (Wrapping this one instance's `preprocess`, not subclassing: Gradio writes a
    `.pyi` stub next to any module that defines a component subclass.)
    """
    image = gr.Image(label="图片", type="filepath", image_mode=None, elem_id=elem_id)
    stock_preprocess = image.preprocess

    def preprocess(payload):
        try:
            return stock_preprocess(payload)
        except Exception:  # noqa: BLE001 - PIL raises many kinds of errors on bad files
            return payload.path

    image.preprocess = preprocess
    return image


SUBTITLE = (
    "Chinese vision-language demo: search images with Chinese text, rank captions for an image, and classify "
    "images zero-shot with an [hf-vlp](https://github.com/hf-vlp/hf-vlp) model."
)


# Every event that runs the model shares one concurrency pool, so at most CONCURRENCY_LIMIT requests use it at once
# whichever tabs they come from; the others wait in the queue (and see their place in it).
_MODEL_EVENT = {"concurrency_id": "model", "concurrency_limit": CONCURRENCY_LIMIT}


def build_demo(space: VLPSpace) -> gr.Blocks:
    """The Gradio UI: three tabs over one `VLPSpace`, examples prefilled, re-ranking only for fusion models."""
    scenes = demo_gallery.demo_gallery()
    example_images = [scenes[i][0] for i in (0, 5, 10, 15)]  # four colours, four shapes
    example_captions = "\n".join(caption for _, caption in scenes[::3])
    with gr.Blocks(title="hf-vlp 中文图文检索演示", analytics_enabled=False) as demo:
        gr.Markdown(f"# hf-vlp 中文图文检索演示\n{SUBTITLE}\n\n模型：`{space.model_name}`")
        with gr.Tab("以文搜图", id="t2i"):
            with gr.Row():
                with gr.Column(scale=1):
                    query = gr.Textbox(label="搜索文字", placeholder="例如：一个红色的圆形", elem_id="t2i-query")
                    top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="返回数量")
                    files = gr.File(
                        label=f"上传图片作为图库（可选，最多 {MAX_UPLOAD_IMAGES} 张）",
                        file_count="multiple",
                        type="filepath",
                        elem_id="t2i-files",
                    )
                    t2i_rerank = gr.Checkbox(label="用交叉编码器重排序搜索结果（融合模型）", visible=space.can_rerank)
                    search_button = gr.Button("搜索", variant="primary", elem_id="t2i-submit")
                    gr.Examples(
                        [["一个红色的圆形"], ["一个蓝色的三角形"], ["一个黄色的星形"]], inputs=[query], label="示例"
                    )
                with gr.Column(scale=2):
                    t2i_status = gr.Markdown(
                        f"图库：{space.gallery.name}（{len(space.gallery)} 张）", elem_id="t2i-status"
                    )
                    results = gr.Gallery(
                        label="搜索结果（对比相似度）", columns=4, height="auto", elem_id="t2i-results"
                    )
                    reranked = gr.Gallery(
                        label="交叉编码器重排序（ITM 分数 + 对比相似度）",
                        columns=4,
                        height="auto",
                        visible=space.can_rerank,
                        elem_id="t2i-reranked",
                    )
            search_args = {
                "inputs": [query, top_k, files, t2i_rerank],
                "outputs": [results, reranked, t2i_status],
                **_MODEL_EVENT,
            }
            query.submit(space.ui_search, **search_args, api_name="search")
            search_button.click(space.ui_search, **search_args, api_visibility="private")
            files.change(space.ui_upload, [files], [t2i_status], api_visibility="private", **_MODEL_EVENT)

        with gr.Tab("以图搜文", id="i2t"):
            with gr.Row():
                with gr.Column():
                    i2t_image = _query_image("i2t-image")
                    captions = gr.Textbox(
                        label="候选文本（每行一条）", value=example_captions, lines=8, elem_id="i2t-captions"
                    )
                    i2t_rerank = gr.Checkbox(
                        label=f"用交叉编码器重排序前 {RERANK_TOP_K} 条文本（融合模型）", visible=space.can_rerank
                    )
                    rank_button = gr.Button("排序", variant="primary", elem_id="i2t-submit")
                    gr.Examples([[image] for image in example_images], inputs=[i2t_image], label="示例")
                with gr.Column():
                    i2t_status = gr.Markdown("上传图片，按与图片的匹配程度给候选文本排序。", elem_id="i2t-status")
                    ranking = gr.Dataframe(headers=["排名", "文本", "相似度", "概率"], interactive=False)
                    rerank_table = gr.Dataframe(
                        headers=["排名", "文本", "重排序得分", "原排名"],
                        label="交叉编码器重排序",
                        interactive=False,
                        visible=space.can_rerank,
                    )
            rank_button.click(
                space.ui_rank_captions,
                [i2t_image, captions, i2t_rerank],
                [ranking, rerank_table, i2t_status],
                api_name="rank",
                **_MODEL_EVENT,
            )

        with gr.Tab("零样本分类", id="zero-shot"):
            with gr.Row():
                with gr.Column():
                    zs_image = _query_image("zs-image")
                    labels = gr.Textbox(label="类别（用逗号分隔）", value=DEFAULT_LABELS, elem_id="zs-labels")
                    template = gr.Textbox(
                        label="提示模板（{} 处填入类别）", value=DEFAULT_TEMPLATE, elem_id="zs-template"
                    )
                    classify_button = gr.Button("分类", variant="primary", elem_id="zs-submit")
                    gr.Examples(
                        [
                            [example_images[0], DEFAULT_LABELS, "一个红色的{}"],
                            [example_images[1], "红色的圆形，绿色的正方形，蓝色的三角形，黄色的星形", "一个{}"],
                        ],
                        inputs=[zs_image, labels, template],
                        label="示例",
                    )
                with gr.Column():
                    zs_status = gr.Markdown("上传图片并填写类别。", elem_id="zs-status")
                    probabilities = gr.Label(label="各类别概率", num_top_classes=10, elem_id="zs-probs")
            classify_button.click(
                space.ui_classify,
                [zs_image, labels, template],
                [probabilities, zs_status],
                api_name="classify",
                **_MODEL_EVENT,
            )
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE)
    return demo


# ------------------------------------------------------------------------------------------------ launch


def create_space(
    model: str | None = None, revision: str | None = None, gallery: str | os.PathLike | None = None
) -> VLPSpace:
    """Load the model, pick the default gallery and encode it once, so the first query is as fast as the rest."""
    vlp_model, processor, description = load_model(model, revision)
    space = VLPSpace(vlp_model, processor, default_gallery(gallery), model_name=description)
    started = time.perf_counter()
    space.gallery_index(space.gallery)
    logger.info(
        "Encoded %s (%d images) in %.1f s", space.gallery.name, len(space.gallery), time.perf_counter() - started
    )
    return space


def launch_demo(
    model: str | None = None,
    revision: str | None = None,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
    gallery: str | os.PathLike | None = None,
    prevent_thread_lock: bool = False,
) -> gr.Blocks:
    """Serve the demo (what `hf-vlp demo` runs). Blocks until stopped unless `prevent_thread_lock`.

    `model` / `revision` default to `HF_VLP_MODEL` / `HF_VLP_REVISION`, then to the demo job's output
    (`DEFAULT_MODEL_DIR`); `host` / `port` to Gradio's (`GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, else
    127.0.0.1:7860). Raises `ModelNotFoundError` with instructions when there is no model.
    """
    demo = build_demo(create_space(model, revision, gallery))
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=SERVER_MAX_FILE_SIZE,
        prevent_thread_lock=prevent_thread_lock,
    )
    return demo


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`python app.py [--model ...]` (how a Space starts the app) and `hf-vlp demo [...]` (`prog="hf-vlp demo"`)."""
    parser = argparse.ArgumentParser(prog=prog, description="hf-vlp Gradio demo")
    parser.add_argument("--model", help=f"model folder or Hub repo id (default: ${ENV_MODEL} or {DEFAULT_MODEL_DIR})")
    parser.add_argument("--revision", help=f"Hub commit to pin (default: ${ENV_REVISION})")
    parser.add_argument(
        "--gallery",
        help=f"image folder to search, or '{BUILTIN_GALLERY}' (default: ${ENV_GALLERY}, else the demo eval set if "
        "present, else the built-in scenes)",
    )
    parser.add_argument("--host", help="address to bind (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: Gradio's, 7860)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        launch_demo(args.model, args.revision, args.host, args.port, args.share, args.gallery)
    except ModelNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
