"""Fixtures shared across the test tree."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module: small models run faster and stay fast on a busy
    2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(cls, *names)``: a dict counting the calls of those methods of ``cls`` (the
    methods still run) for the rest of the test."""

    def count(cls, *names: str) -> dict[str, int]:
        calls = {n: 0 for n in names}
        for name in names:
            original = getattr(cls, name)

            def counted(self, *a, _name=name, _original=original, **k):
                calls[_name] += 1
                return _original(self, *a, **k)

            monkeypatch.setattr(cls, name, counted)
        return calls

    return count
