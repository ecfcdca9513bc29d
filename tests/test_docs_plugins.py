"""docs/plugins.md documents every hook and the contract, and its worked example works as is."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch import hookspecs, plugins
from sparsesearch.masks import get_mask
from sparsesearch.testing import check_strategy

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
TEXT = DOC.read_text(encoding="utf-8")

HOOKS = {
    name: list(inspect.signature(fn).parameters)
    for name, fn in vars(hookspecs).items()
    if name.startswith("sparsesearch_") and callable(fn)
}
HEADING = re.compile(r"^### `(sparsesearch_\w+)\(([^)]*)\)`\s*$", re.MULTILINE)
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\s*\n```[\w-]*\n(.*?)\n```", re.DOTALL)


def _sections() -> dict[str, tuple[list[str], str]]:
    """``{hook: (arguments in the heading, section text up to the next heading)}``."""
    out = {}
    matches = list(HEADING.finditer(TEXT))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(TEXT)
        nxt = TEXT.find("\n## ", m.end())
        if nxt != -1:
            end = min(end, nxt)
        args = [a.strip() for a in m.group(2).split(",") if a.strip()]
        out[m.group(1)] = (args, TEXT[m.end():end])
    return out


def test_hookspecs_found():
    assert {"sparsesearch_register_strategies", "sparsesearch_suggest_params"} <= set(HOOKS)


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_documented(hook):
    sections = _sections()
    assert hook in sections, f"docs/plugins.md has no '### `{hook}(...)`' heading"
    args, body = sections[hook]
    assert args == HOOKS[hook], f"{hook}: documented with ({', '.join(args)}), is {HOOKS[hook]}"
    for arg in HOOKS[hook]:
        assert f"`{arg}`" in body, f"{hook}: argument {arg!r} is not explained in its section"
    assert "Called by" in body, f"{hook}: say who calls it and when"


def test_no_documented_hook_is_missing_from_hookspecs():
    assert set(_sections()) <= set(HOOKS)


def test_contract_fields_are_documented():
    names = [f.name for f in dataclasses.fields(sparsesearch.ScoreContext)]
    names += ["generator(layer)", "gradient(layer)"]
    names += [f.name for f in dataclasses.fields(sparsesearch.Layer)] + ["out_channels", "bias"]
    names += ["name", "granularity", "requires_data", "description"]
    for name in names:
        assert f"| `{name}` |" in TEXT, f"`{name}` is not in a table of docs/plugins.md"


def test_conformance_kit_names_are_documented():
    import sparsesearch.testing as kit

    for name in kit.__all__:
        assert f"`{name}" in TEXT, f"sparsesearch.testing.{name} is not documented"


# --------------------------------------------------------------------------- worked example


def _example_files() -> dict[str, str]:
    return {name: body + "\n" for name, body in FILE_BLOCK.findall(TEXT)}


def test_example_is_small():
    files = _example_files()
    assert set(files) == {"pyproject.toml", "sparsesearch_lpfilter.py"}
    assert len(files["sparsesearch_lpfilter.py"].splitlines()) < 30
    assert '[project.entry-points.sparsesearch]' in files["pyproject.toml"]


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("example") / "sparsesearch-lpfilter"
    src.mkdir()
    for name, body in _example_files().items():
        (src / name).write_text(body, encoding="utf-8")
    target = src.parent / "site"
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--disable-pip-version-check", "--target", str(target), str(src),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip install of the example failed:\n{out.stdout}\n{out.stderr}"
    return target


@pytest.fixture
def example(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset_plugins()
    yield example_site
    plugins.reset_plugins()
    sys.modules.pop("sparsesearch_lpfilter", None)


def test_example_is_listed(example):
    info = sparsesearch.get_strategy("lp-filter")
    assert info.distribution == "sparsesearch-lpfilter"
    assert info.plugin == "lp-filter"
    assert info.granularity == "channel" and not info.requires_data


def test_example_passes_the_conformance_kit(example):
    check_strategy("lp-filter")


def test_example_prunes_a_model(example):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    weights = [model[i].weight.detach().clone() for i in (0, 2)]
    sparsesearch.prune(model, "lp-filter", 0.5, params={"lp-filter.p": 1.0})
    for i, w in zip((0, 2), weights):
        removed = (get_mask(model[i]).flatten(1) == 0).all(1)
        expected = torch.zeros(8, dtype=torch.bool)
        expected[torch.argsort(w.abs().sum(1), stable=True)[:4]] = True
        assert torch.equal(removed, expected)
    assert int((get_mask(model[4]) == 0).sum()) == 0  # output units are never removed


def test_example_suggests_its_hyperparameter(example):
    optuna = pytest.importorskip("optuna")

    trial = optuna.trial.FixedTrial({"lp-filter.p": 1.0})
    assert plugins.suggest_strategy_params("lp-filter", trial) == {"lp-filter.p": 1.0}
    assert plugins.suggest_strategy_params("magnitude", trial) == {}
