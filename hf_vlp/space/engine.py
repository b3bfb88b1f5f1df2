"""The Space's search engine, independent of Gradio: 以文搜图, 以图搜图, 以图搜文 and zero-shot classification.

It uses hf_vlp's public API only: the model contract of the retrieval core (`hf_vlp.models.retrieval_core`:
`encode_text`, `encode_image`, `similarity`, `get_logit_scale`, and `rerank_scores` of a `RerankingModel`), its
embedding operations (`select_embeddings`, `cat_embeddings`) and block-wise top-k, and `hf_vlp.retrieval`, so any
hf-vlp model family works, loaded from a local folder or from the Hub with its shipped code. A search runs over a `Gallery` (embeddings computed once per content and kept
in a small LRU cache) or over a built index (`hf_vlp.index.VLPIndex`, see `IndexGallery`); results come back as
positions and scores, and `result_items` turns them into immutable thumbnail files with captions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from hf_vlp.models.retrieval_core import (
    RerankingModel,
    blockwise_topk,
    cat_embeddings,
    implementation_of,
    rerank_topk,
    select_embeddings,
)
from hf_vlp.retrieval import chunked_topk

from .galleries import Gallery, ThumbnailStore
from .inputs import MAX_TOP_K, UserInputError, check_text, fill_template


__all__ = [
    "ENCODE_BATCH_SIZE",
    "GALLERY_CACHE_SIZE",
    "RERANK_COMBINE",
    "RERANK_TOP_K",
    "GalleryIndex",
    "SearchResult",
    "SearchSource",
    "VLPSpace",
]

ENCODE_BATCH_SIZE = 64
GALLERY_CACHE_SIZE = 4  # galleries whose embeddings are kept (the built-in one and a few uploads)
TEXT_CACHE_SIZE = 256  # encoded search queries kept: popular queries cost no text encoding
SIMILARITY_CHUNK = 1024  # gallery rows scored at once by a token-wise model's `similarity`

# Fusion models: how many captions the cross encoder re-scores in 以图搜文, and how its score is combined with the
# contrastive one (`hf_vlp.retrieval.rerank_topk`; "sum" = LAVIS, the default of `model.rank` and of the training
# side's evaluation, so the Space shows the order that evaluation reports).
RERANK_TOP_K = 16
RERANK_COMBINE = "sum"


class SearchSource(Protocol):
    """What a result list points into: a `Gallery`, or an index (`IndexGallery`)."""

    name: str

    def __len__(self) -> int: ...

    def caption(self, position: int) -> str: ...

    def thumbnail_key(self, position: int) -> str: ...

    def load(self, position: int) -> Image.Image: ...


@dataclass
class GalleryIndex:
    """The cached embeddings of one gallery: rows for the images that could be read, and the names of the rest."""

    embeddings: Any  # what the model's `encode_image` returned, concatenated, on the model's device
    positions: torch.Tensor  # gallery index of each embedding row
    skipped: list[str]


@dataclass
class SearchResult:
    """`(position, score)` pairs in `source`, best first; `reranked` when the cross encoder re-ranked them.

    `searched` is how many items were scored, `skipped` the names of gallery files that could not be read, `match`
    the calibrated 匹配概率 of each ranked result (models with `match_probability`, see `VLPSpace.can_match`).
    """

    ranked: list[tuple[int, float]]
    reranked: list[tuple[int, float]] | None
    source: SearchSource
    searched: int
    skipped: list[str]
    match: list[float] | None = None


class VLPSpace:
    """Retrieval, ranking and classification with one model, over a default gallery and optionally an index.

    Gallery embeddings are computed once per gallery content (`Gallery.key`), in batches, and kept in a small LRU
    cache, so a query only encodes its text (itself cached for repeated queries); the top-k uses `chunked_topk` (or
    the model's own `similarity` in chunks for token-wise models), so thousands of images stay interactive. With an
    `index` (`IndexGallery`), searches without an upload go to the index instead of the gallery.

    Fusion models (those with `rerank_scores(image, text)`) can also re-rank the top-k with their cross encoder:
    `hf_vlp.retrieval.rerank_topk`, ITM log-odds + contrastive score.
    """

    def __init__(
        self,
        model,
        processor,
        gallery: Gallery,
        model_name: str = "",
        batch_size: int = ENCODE_BATCH_SIZE,
        cache_size: int = GALLERY_CACHE_SIZE,
        index=None,
        thumbnails: ThumbnailStore | None = None,
    ):
        self.model = model
        self.processor = processor
        self.gallery = gallery
        self.index = index
        self.model_name = model_name
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.thumbnails = thumbnails or ThumbnailStore()
        self._cache: OrderedDict[str, GalleryIndex] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._encoding: dict[str, threading.Lock] = {}  # gallery key -> lock held while it is being encoded
        self._texts: OrderedDict[str, Any] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def default_source(self) -> SearchSource:
        """What a search without an upload runs over: the index when there is one, else the default gallery."""
        return self.index if self.index is not None else self.gallery

    @property
    def can_rerank(self) -> bool:
        """Whether the model has a cross encoder to re-rank with (a `RerankingModel`: fusion models)."""
        return implementation_of(self.model, RerankingModel) is not None

    @property
    def can_match(self) -> bool:
        """Whether the model gives a calibrated match probability (匹配概率): `match_probability` with the
        calibration `hf-vlp calibrate` stores in its config, or a fusion ITM head (a probability as it is)."""
        return bool(getattr(self.model, "has_match_probability", False))  # remote code saved before it: False

    def match_probabilities(self, images: list[Image.Image], texts: list[str]) -> list[float] | None:
        """`model.match_probability` of each (image, text) pair (a side of one is paired with every item of the
        other), or None when the model has none (`can_match`)."""
        if not self.can_match:
            return None
        batch = self.processor(text=texts, images=images)
        names = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        inputs = {name: batch[name].to(self.device) for name in names if batch.get(name) is not None}
        with torch.inference_mode():
            return self.model.match_probability(**inputs).float().cpu().tolist()

    def _with_match(self, result: SearchResult, query: str) -> SearchResult:
        """The result with the 匹配概率 of the query and each ranked image, when the model gives one."""
        if self.can_match and result.ranked:
            result.match = self.match_probabilities([result.source.load(p) for p, _ in result.ranked], [query])
        return result

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

    def encode_query(self, text: str):
        """`encode_texts([text])`, from a small LRU cache of recent queries."""
        with self._cache_lock:
            cached = self._texts.get(text)
            if cached is not None:
                self._texts.move_to_end(text)
                return cached
        encoded = self.encode_texts([text])
        with self._cache_lock:
            self._texts[text] = encoded
            while len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        return encoded

    def encode_images(self, images: list[Image.Image]):
        """Encoder outputs of RGB images, computed in batches of `batch_size`."""
        parts = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = self.processor(images=images[start : start + self.batch_size])["pixel_values"]
                parts.append(self.model.encode_image(pixel_values=pixels.to(self.device)))
        return cat_embeddings(parts)

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
                    images.append(gallery.load(position))
                except UserInputError:
                    skipped.append(gallery.captions[position])
                    continue
                positions.append(position)
            if images:
                parts.append(self.encode_images(images))
        if not positions:
            names = "、".join(f"「{name}」" for name in skipped[:5]) + (
                f"等 {len(skipped)} 个文件" if len(skipped) > 5 else ""
            )
            raise UserInputError(f"图库里没有可用的图片：{names}不是可识别的图片文件。")
        return GalleryIndex(cat_embeddings(parts), torch.tensor(positions), skipped)

    # ---------------------------------------------------------------- scoring
    def _text_topk(self, text, gallery, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k gallery rows for one encoded query text: `(scores, rows)`, best first, ties to the lower row."""
        if not self._token_wise:
            scores, rows = chunked_topk(text.embeds.float(), gallery.embeds.float(), k)
            return scores[0], rows[0]

        def score_block(start: int, stop: int) -> torch.Tensor:  # [1 text, stop - start images]
            return self.model.similarity(select_embeddings(gallery, slice(start, stop)), text)[1].T.float()

        with torch.inference_mode():
            scores, rows = blockwise_topk(score_block, gallery.embeds.shape[0], k, SIMILARITY_CHUNK)
        return scores[0], rows[0]

    def _rerank(self, images, texts, scores, rows, query_is_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-score one query's top-k `rows` with the model's cross encoder; returns the new `(scores, rows)`."""

        reranker = implementation_of(self.model, RerankingModel)

        def pair_scorer(query_index: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
            image_rows, text_rows = (
                (query_index, candidate_index) if query_is_image else (candidate_index, query_index)
            )
            return reranker.rerank_scores(select_embeddings(images, image_rows), select_embeddings(texts, text_rows))

        scores, rows = rerank_topk(None, rows[None], scores[None], pair_scorer, combine=RERANK_COMBINE)
        return scores[0], rows[0]

    # ---------------------------------------------------------------- tasks
    def search(self, query: str, gallery: Gallery | None = None, k: int = 8, rerank: bool = False) -> SearchResult:
        """The `k` images best matching a Chinese query, in `gallery` (default: the index, else the gallery)."""
        query = check_text(query, "要搜索的文字")
        k = max(1, min(int(k), MAX_TOP_K))
        if gallery is None and self.index is not None:
            return self._with_match(self.index.search_text(self, query, k, rerank=rerank and self.can_rerank), query)
        text = self.encode_query(query)
        gallery = gallery or self.gallery
        index = self.gallery_index(gallery)
        scores, rows = self._text_topk(text, index.embeddings, k)
        ranked = [(int(index.positions[r]), float(s)) for r, s in zip(rows.tolist(), scores)]
        reranked = None
        if rerank and self.can_rerank:
            scores, rows = self._rerank(index.embeddings, text, scores, rows, query_is_image=False)
            reranked = [(int(index.positions[r]), float(s)) for r, s in zip(rows.tolist(), scores)]
        return self._with_match(SearchResult(ranked, reranked, gallery, len(index.positions), index.skipped), query)

    def search_image(self, image: Image.Image, gallery: Gallery | None = None, k: int = 8) -> SearchResult:
        """以图搜图: the `k` images most similar to `image` by their global embeddings (cosine), in `gallery`
        (default: the index, else the gallery)."""
        k = max(1, min(int(k), MAX_TOP_K))
        if gallery is None and self.index is not None:
            return self.index.search_image(self, image, k)
        gallery = gallery or self.gallery
        index = self.gallery_index(gallery)
        query = self.encode_images([image])
        scores, rows = chunked_topk(query.embeds.float(), index.embeddings.embeds.float(), k)
        ranked = [(int(index.positions[r]), float(s)) for r, s in zip(rows[0].tolist(), scores[0])]
        return SearchResult(ranked, None, gallery, len(index.positions), index.skipped)

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
        prompts = [fill_template(template, label) for label in labels]
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

    # ---------------------------------------------------------------- display
    def result_items(
        self, source: SearchSource, results: list[tuple[int, float]], match: list[float] | None = None
    ) -> list[tuple[str, str]]:
        """`(thumbnail file, "rank · score · caption")` per result (the score stays visible when a long caption
        is cut; with `match`, "rank · score · 匹配概率 p% · caption"); thumbnails are immutable files
        (`ThumbnailStore`), shared by every request that shows them."""

        def load(position: int) -> Image.Image:
            try:
                return source.load(position)
            except UserInputError:  # an index item whose file has gone since it was indexed: a grey tile
                return Image.new("RGB", (64, 64), (200, 200, 200))

        items = []
        for rank, (position, score) in enumerate(results, start=1):
            path = self.thumbnails.path(source.thumbnail_key(position), lambda p=position: load(p))
            probability = f"匹配概率 {match[rank - 1]:.0%} · " if match is not None else ""
            items.append((path, f"{rank} · {score:.3f} · {probability}{source.caption(position)}"))
        return items
