"""Packaging: the distribution ships `sparsesearch` and `sparsesearch_builtin` (never a top-level
`plugins` package or anything else under plugins/), and registers the built-in strategies as
entry points of group "sparsesearch", the same way a third party does."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sparsesearch

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_ENTRY_POINTS = {
    "magnitude": "sparsesearch_builtin.magnitude",
    "random": "sparsesearch_builtin.random_strategy",
    "l1-filter": "sparsesearch_builtin.l1_filter",
    "gradient": "sparsesearch_builtin.gradient",
}


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_no_top_level_plugins_package(tmp_path):
    # find_spec only imports parent packages, so this stays fast (no torch import)
    code = (
        "import importlib.util as u; "
        "print(u.find_spec('plugins')); "
        "print(u.find_spec('sparsesearch_builtin.magnitude').origin)"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    plugins_spec, origin = result.stdout.strip().splitlines()
    assert plugins_spec == "None"
    assert Path(origin).name == "magnitude.py"
    result = _run("import plugins", tmp_path)
    assert result.returncode != 0
    assert "No module named 'plugins'" in result.stderr


def test_installed_metadata():
    dist = importlib.metadata.distribution("sparsesearch")
    top_level = set((dist.read_text("top_level.txt") or "").split())
    assert "plugins" not in top_level
    assert top_level <= {"sparsesearch", "sparsesearch_builtin"}
    eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "sparsesearch"}
    assert eps == BUILTIN_ENTRY_POINTS
    for ep in dist.entry_points:
        if ep.group == "sparsesearch":
            module = ep.load()
            assert callable(getattr(module, "sparsesearch_register_strategies", None)), ep.name
    # and they are found through the same entry-point group as any third party's
    found = {
        ep.name: ep.dist.name
        for ep in importlib.metadata.entry_points(group="sparsesearch")
        if ep.name in BUILTIN_ENTRY_POINTS
    }
    assert found == {name: "sparsesearch" for name in BUILTIN_ENTRY_POINTS}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of the source tree (the working tree is left alone)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sparsesearch", "plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    code = (
        "import sys; from setuptools import build_meta; "
        f"print(build_meta.build_wheel({str(out)!r}))"
    )
    result = _run(code, src)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build without network: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    name = result.stdout.strip().splitlines()[-1]
    return zipfile.ZipFile(out / name)


def test_wheel_ships_only_the_two_packages(wheel):
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sparsesearch", "sparsesearch_builtin", "sparsesearch-0.1.0.dist-info"}, top
    assert not any(n.startswith("plugins/") for n in names)
    for module in ("magnitude", "random_strategy", "l1_filter", "gradient"):
        assert f"sparsesearch_builtin/{module}.py" in names
    top_level = wheel.read("sparsesearch-0.1.0.dist-info/top_level.txt").decode().split()
    assert sorted(top_level) == ["sparsesearch", "sparsesearch_builtin"]


def test_wheel_entry_points(wheel):
    text = wheel.read("sparsesearch-0.1.0.dist-info/entry_points.txt").decode()
    group: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif "=" in line and current == "sparsesearch":
            key, value = (part.strip() for part in line.split("=", 1))
            group[key] = value
    assert group == BUILTIN_ENTRY_POINTS
    assert "sparsesearch = sparsesearch.cli:main" in text


def test_builtin_plugins_use_only_the_public_api():
    """The built-ins are examples for third parties: `import sparsesearch` and public names."""
    public = set(sparsesearch.__all__)
    for path in sorted((ROOT / "plugins" / "sparsesearch_builtin").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module is None or not node.module.startswith("sparsesearch"), (
                    f"{path.name}: from {node.module} import ..."
                )
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name in ("torch", "sparsesearch"), f"{path.name}: import {alias.name}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "sparsesearch"
            ):
                assert node.attr in public, f"{path.name}: sparsesearch.{node.attr} is not public"
