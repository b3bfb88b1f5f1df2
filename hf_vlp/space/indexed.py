"""A built index (`hf-vlp index build`) as what the Space searches: `hf_vlp.index.VLPIndex` behind the engine's
`SearchSource` shape (name, length, caption, thumbnail, search).

The index does the search (faiss, token-wise re-scoring, fusion re-rank) with the Space's own model, which must embed
into the index's space (`VLPIndex.load` checks the recorded fingerprint); result thumbnails are made from the image
paths the index stores, so a gallery of millions of images costs the Space no memory beyond faiss.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .inputs import UserInputError, load_image


if TYPE_CHECKING:
    from .engine import SearchResult, VLPSpace


__all__ = ["IndexGallery", "IndexOpenError"]


class IndexOpenError(RuntimeError):
    """The folder cannot be served: not a finished image index, or built with a model of another embedding space."""


class IndexGallery:
    """An image index opened with the Space's model; positions are the index's item positions."""

    def __init__(self, index, name: str):
        self.index = index
        self.name = name
        self._paths = index.items.column("path").to_pylist()
        self._texts = index.items.column("text").to_pylist()
        self._ids = index.items.column("id").to_pylist()

    @classmethod
    def open(cls, directory: str | os.PathLike, space: VLPSpace) -> IndexGallery:
        """`VLPIndex.load(directory, space.model, space.processor)`, or `IndexOpenError` saying what to fix."""
        from hf_vlp.index import IndexFormatError, IndexModelMismatchError, VLPIndex

        directory = Path(directory)
        if not directory.is_dir():
            raise IndexOpenError(f"index folder not found: {directory} (build one with `hf-vlp index build`)")
        try:
            index = VLPIndex.load(directory, space.model, space.processor)
        except IndexModelMismatchError as error:
            raise IndexOpenError(f"{error} (serve the index with the model it was built with: --model)") from error
        except (IndexFormatError, OSError) as error:
            raise IndexOpenError(f"{directory} is not a finished hf-vlp index: {error}") from error
        if index.modality != "image":
            raise IndexOpenError(f"{directory} indexes captions; the Space searches image indexes (--modality image)")
        return cls(index, directory.resolve().name)

    def __len__(self) -> int:
        return len(self.index)

    def caption(self, position: int) -> str:
        text, path = self._texts[position], self._paths[position]
        return text or (Path(path).name if path else self._ids[position])

    def thumbnail_key(self, position: int) -> str:
        return f"index:{self.index.index_dir}:{position}"

    def load(self, position: int) -> Image.Image:
        path = self._paths[position]
        if not path:
            raise UserInputError(f"索引中的「{self.caption(position)}」没有保存图片路径。")
        return load_image(path, self.caption(position))

    def _result(self, hits, reranked_hits=None) -> SearchResult:
        from .engine import SearchResult

        def pairs(found):
            return [(hit.position, hit.score) for hit in found]

        reranked = pairs(reranked_hits) if reranked_hits is not None else None
        return SearchResult(pairs(hits), reranked, self, len(self), [])

    def search_text(self, space: VLPSpace, query: str, k: int, rerank: bool = False) -> SearchResult:
        """以文搜图 in the index (and, for fusion models when asked, the cross encoder's re-ranking of it)."""
        hits = self.index.search(texts=[query], k=k)[0]
        reranked = self.index.search(texts=[query], k=k, rerank=True)[0] if rerank else None
        return self._result(hits, reranked)

    def search_image(self, space: VLPSpace, image: Image.Image, k: int) -> SearchResult:
        """以图搜图 in the index (global image embeddings)."""
        return self._result(self.index.search(images=[image], k=k)[0])
