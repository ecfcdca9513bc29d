"""plugins/sparsesearch-taylor: a separate distribution found through its entry point.

It is pip-installed (offline, no dependencies, with the venv's setuptools) into a temporary
folder that is put on sys.path, exactly as a third-party plugin would be installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch import plugins
from sparsesearch.masks import get_mask
from sparsesearch.testing import check_strategy, parametrize_strategies

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins" / "sparsesearch-taylor"


def pip_install(source: Path, target: Path) -> None:
    """``pip install --no-deps --no-build-isolation --target`` from a copy of ``source``
    (pip builds in-tree, so the checkout stays free of build/ and *.egg-info)."""
    work = target.parent / f"{source.name}-src"
    shutil.copytree(
        source, work, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--disable-pip-version-check", "--target", str(target), str(work),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip install failed:\n{out.stdout}\n{out.stderr}"


def _forget_modules(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def taylor_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("taylor") / "site"
    pip_install(PLUGIN_DIR, target)
    return target


@pytest.fixture
def taylor(taylor_site, monkeypatch):
    """The plugin on sys.path and the plugin manager rediscovering entry points."""
    monkeypatch.syspath_prepend(str(taylor_site))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset_plugins()
    yield taylor_site
    plugins.reset_plugins()
    _forget_modules("sparsesearch_taylor")


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    gen = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randn(16, 1, 6, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(3)
    ]
    return model, batches


def test_not_shipped_by_the_main_package(monkeypatch):
    """The root pyproject's package discovery (as setuptools applies it) leaves the plugin out."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    packages = sorted(dist.packages)
    assert not [p for p in packages if "taylor" in p], (
        f"the main distribution would ship {packages}: set namespaces = false (or exclude "
        "'sparsesearch-*') in [tool.setuptools.packages.find] of the root pyproject.toml"
    )
    assert {p.split(".")[0] for p in packages} == {"sparsesearch", "sparsesearch_builtin"}
    eps = dist.entry_points.get("sparsesearch", []) if dist.entry_points else []
    assert not [e for e in eps if "taylor" in e]


def test_not_installed_with_sparsesearch():
    plugins.reset_plugins()
    try:
        assert importlib.util.find_spec("sparsesearch_taylor") is None
        for info in sparsesearch.list_strategies():
            assert info.distribution != "sparsesearch" or info.name != "taylor"
    finally:
        plugins.reset_plugins()


def test_discovered_through_its_entry_point(taylor):
    info = sparsesearch.get_strategy("taylor")
    assert info.distribution == "sparsesearch-taylor"
    assert info.plugin == "taylor"
    assert info.granularity == "channel" and info.requires_data
    assert "taylor" in [s.name for s in sparsesearch.list_strategies()]
    assert parametrize_strategies(distribution="sparsesearch-taylor") == ["taylor"]
    import sparsesearch_taylor

    assert Path(sparsesearch_taylor.__file__).is_relative_to(taylor)


def test_can_be_disabled(taylor, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "taylor")
    plugins.reset_plugins()
    assert "taylor" not in parametrize_strategies()
    with pytest.raises(sparsesearch.StrategyError, match="unknown strategy 'taylor'"):
        sparsesearch.get_strategy("taylor")


def test_passes_the_conformance_kit(taylor):
    check_strategy("taylor")


def test_prunes_a_model_with_data(taylor):
    model, batches = _toy()
    sparsesearch.prune(model, "taylor", 0.5, data=batches)
    for name, out_channels, pruned in (("0", 8, 4), ("2", 8, 4), ("6", 3, 0)):
        module = dict(model.named_modules())[name]
        mask = get_mask(module)
        assert mask is not None
        removed = (mask.flatten(1) == 0).all(1)
        assert int(removed.sum()) == pruned
        assert bool(((mask.flatten(1) == 0).any(1) == removed).all())  # whole channels
        assert torch.equal(get_mask(module, "bias"), (~removed).to(mask.dtype))
    with pytest.raises(sparsesearch.StrategyError, match="needs data"):
        sparsesearch.prune(_toy()[0], "taylor", 0.5)


def test_scores_are_the_engines_taylor_importance(taylor):
    """Channels removed are those with the smallest Σ_batches (Σ_filter w·∂L/∂w)²."""
    model, batches = _toy(seed=1)
    w = model[2].weight.detach().clone()
    importance = torch.zeros(8)
    for x, y in batches:
        work = _toy(seed=1)[0]
        work.load_state_dict(model.state_dict())
        nn.functional.cross_entropy(work(x), y).backward()
        importance += (w * work[2].weight.grad).flatten(1).sum(1) ** 2
    sparsesearch.prune(model, "taylor", 0.5, data=batches, num_batches=len(batches))
    removed = (get_mask(model[2]).flatten(1) == 0).all(1)
    expected = torch.zeros(8, dtype=torch.bool)
    expected[torch.argsort(importance, stable=True)[:4]] = True
    assert torch.equal(removed, expected)


@pytest.mark.skipif(not hasattr(sparsesearch, "search"), reason="sparsesearch.search not available")
def test_runs_in_a_small_search(taylor, tmp_path):
    import optuna
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randn(n, 1, 6, 6, generator=gen)
        y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()
        return TensorDataset(x, y)

    model, _ = _toy()
    result = sparsesearch.search(
        model, (split(96), split(48), split(48)), budget=0.5, strategies=["taylor"],
        n_trials=2, runs_dir=tmp_path, heuristics=(), trained=True, pruner="none",
        storage=optuna.storages.InMemoryStorage(),
        space={"epochs": 1, "batch_size": 32, "allocation": "layers"}, num_batches=2,
    )
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.user_attrs["strategy"] == "taylor" for t in done)
