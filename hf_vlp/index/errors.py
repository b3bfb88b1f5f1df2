"""The two errors of the index: a folder that is not a (complete) index, and a model that does not match it."""

from __future__ import annotations


__all__ = ["IndexFormatError", "IndexModelMismatchError"]


class IndexFormatError(ValueError):
    """The folder is not a (complete) hf-vlp index, or index parameters are invalid."""


class IndexModelMismatchError(ValueError):
    """The query model embeds into a different space than the model the index was built with."""
