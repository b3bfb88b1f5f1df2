"""Errors and bookkeeping for bad input.

Two kinds of failure are kept apart on purpose:

* *Configuration* errors (a metadata file that is not there, a column that does not exist) are the user's to fix
  before training starts, so they raise `DataFormatError` with the offending path or column in the message.
* *Data* errors (one corrupt JPEG, one empty caption among 100M pairs) must never kill a long run, so they are
  counted in a `BadSampleCounter`, logged once, and the sample is skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Literal


__all__ = ["BadSampleCounter", "BadSampleError", "BadSampleReason", "DataFormatError", "MissingColumnError"]

logger = logging.getLogger(__name__)

BadSampleReason = Literal[
    "missing_image",  # the file (or the TSV row, or the tar member) is not there
    "empty_image",  # zero bytes
    "corrupt_image",  # PIL cannot identify or fully decode it (truncated files land here)
    "empty_caption",  # no caption left after stripping whitespace
    "bad_record",  # a metadata row that cannot be parsed (malformed JSON line, ...)
    "corrupt_shard",  # a streaming shard that fails part-way; the rest of the shard is skipped
]


class DataFormatError(ValueError):
    """A data source is configured wrongly (missing metadata file, unknown column, unknown shard type)."""


class MissingColumnError(DataFormatError):
    """A requested column is not in a data source; `argument` names the reader argument that asked for it."""

    def __init__(self, column: str, argument: str, source: str, available: Sequence[str]) -> None:
        super().__init__(
            f"Column {column!r} (from {argument}=) not found in {source}; available columns: {sorted(available)}"
        )
        self.column, self.argument, self.source, self.available = column, argument, source, list(available)


class BadSampleError(Exception):
    """One sample cannot be used; `reason` says why so that it can be counted per reason."""

    def __init__(self, reason: BadSampleReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BadSampleCounter:
    """Per-reason counts of skipped samples, with one warning per bad sample.

    The counter lives in the process that reads the data: with DataLoader workers each worker holds its own copy,
    so the main process sees the per-batch total through the collator's `num_skipped_samples` key instead (see
    `ImageTextCollator`). A sample that is bad every epoch is logged the first time only, so logs stay readable on
    multi-epoch runs.
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self._log = log or logger
        self._logged: set[tuple[str, str]] = set()

    def record(self, sample_id: str, reason: BadSampleReason, detail: str = "") -> None:
        """Count one skipped sample and warn about it unless this (id, reason) was already reported."""
        self.counts[reason] += 1
        key = (str(sample_id), reason)
        if key not in self._logged:
            self._logged.add(key)
            self._log.warning("Skipping bad sample %r (%s): %s", sample_id, reason, detail)

    @property
    def total(self) -> int:
        """Number of skipped samples over all reasons."""
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """Counts per reason, for logging into trainer metrics."""
        return dict(self.counts)
