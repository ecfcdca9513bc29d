"""Every ```python block of docs/python-api.md runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import sparsesearch

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 6
    namespace: dict = {}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{DOC.name}[block {i}]", "exec"), namespace)  # noqa: S102
    finally:
        sparsesearch.plugins.reset_plugins()
    assert namespace["result"].params <= namespace["result"].budget_params


def test_every_public_name_is_documented():
    text = DOC.read_text()
    missing = [name for name in sparsesearch.__all__ if f"`{name}" not in text and name not in text]
    assert not missing, f"undocumented public names: {missing}"
