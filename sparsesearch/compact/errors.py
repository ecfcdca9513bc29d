"""The errors and warnings of compaction (re-exported by :mod:`sparsesearch.compact`)."""

from __future__ import annotations

from sparsesearch.errors import SparsesearchError


class CompactionError(SparsesearchError):
    """The compacted model does not compute what the masked model computes (names the group)."""


class Unsupported(Exception):
    """Raised by an op handler: this node cannot be compacted (the message says why)."""


class CompactionWarning(UserWarning):
    """Pruned channels that could not be removed, or a model that could not be compacted."""
