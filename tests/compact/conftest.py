"""Shared fixtures of the ``sparsesearch.compact`` tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _compact_one_thread(one_thread):
    """Every compaction test module runs with one intra-op thread (tests/conftest.py)."""
