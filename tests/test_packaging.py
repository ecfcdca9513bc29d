"""Packaging: the distribution ships `sparsesearch` and `sparsesearch_builtin` (never a top-level
`plugins` package or anything else under plugins/), and registers the built-in strategies as
entry points of group "sparsesearch", the same way a third party does."""

from __future__ import annotations

import ast
import importlib.metadata
import os
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
    for name in ("pyproject.toml", "README.md", "LICENSE"):
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
    wheel = zipfile.ZipFile(out / name)
    wheel.build_output = result.stdout + result.stderr  # type: ignore[attr-defined]
    return wheel


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


DIST_INFO = "sparsesearch-0.1.0.dist-info"


def _metadata(wheel: zipfile.ZipFile) -> list[tuple[str, str]]:
    text = wheel.read(f"{DIST_INFO}/METADATA").decode()
    head = text.split("\n\n", 1)[0]  # the headers; the README follows
    return [tuple(part.strip() for part in line.split(":", 1)) for line in head.splitlines()
            if ":" in line and not line.startswith(" ")]


def test_wheel_ships_py_typed_and_the_license(wheel):
    names = wheel.namelist()
    assert "sparsesearch/py.typed" in names
    assert f"{DIST_INFO}/licenses/LICENSE" in names
    text = wheel.read(f"{DIST_INFO}/licenses/LICENSE").decode()
    assert text == (ROOT / "LICENSE").read_text()
    # the full license text, not a notice pointing to it
    assert text.startswith("Copyright (c) 2026 the sparsesearch authors\n")
    for part in ("Apache License\n                           Version 2.0, January 2004",
                 "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                 "3. Grant of Patent License.", "9. Accepting Warranty or Additional Liability.",
                 "END OF TERMS AND CONDITIONS"):
        assert part in text, part
    assert (ROOT / "sparsesearch" / "py.typed").is_file()


def test_wheel_metadata(wheel):
    headers = _metadata(wheel)
    values = lambda key: [v for k, v in headers if k == key]  # noqa: E731
    assert values("License-Expression") == ["Apache-2.0"]
    assert values("License-File") == ["LICENSE"]
    assert not any(v.startswith("License ::") for v in values("Classifier"))
    assert "Typing :: Typed" in values("Classifier")
    # no public address yet: no guessed URLs that lead nowhere (pyproject.toml says so)
    assert values("Project-URL") == []
    requires = values("Requires-Dist")
    assert "optuna<6,>=5" in requires
    extras = set(values("Provides-Extra"))
    assert {"onnx", "safetensors", "postgres", "dev"} <= extras
    core = [r for r in requires if "extra ==" not in r]
    assert "tqdm>=4.60" in core  # the progress bar: a core dependency (tiny; optuna needs it too)
    for optional in ("onnx", "onnxruntime", "safetensors"):
        assert not [r for r in core if r.split(";")[0].strip().startswith(optional)], optional
        assert any(r.startswith(optional) and "extra ==" in r for r in requires), optional


def test_building_gives_no_deprecation_warning(wheel):
    assert "Deprecat" not in wheel.build_output, wheel.build_output[-3000:]


def _dependency_farm(target: Path) -> Path:
    """The project venv's installed packages, minus sparsesearch itself (symlinks), so a fresh
    venv gets torch, optuna, ... without the editable checkout on its path."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")
                     and Path(p).is_relative_to(sys.prefix)))
    target.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("sparsesearch", "__editable__", "_sparsesearch")) or \
                entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    return target


def test_the_wheel_installs_and_runs_outside_the_source_tree(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip())
    (site / "project-deps.pth").write_text(str(_dependency_farm(tmp_path / "deps")) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", "--disable-pip-version-check", wheel.filename],
        capture_output=True, text=True, timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(python), "-c", "import sparsesearch, sparsesearch_builtin, pathlib; "
         "print(sparsesearch.__file__); print(sparsesearch_builtin.__file__); "
         "print((pathlib.Path(sparsesearch.__file__).parent / 'py.typed').is_file())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert where.returncode == 0, where.stderr
    main, builtin, typed = where.stdout.split()
    assert Path(main).is_relative_to(site) and Path(builtin).is_relative_to(site)
    assert typed == "True"
    listed = subprocess.run([str(venv / "bin" / "sparsesearch"), "strategies"], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    for name in BUILTIN_ENTRY_POINTS:
        assert name in listed.stdout, listed.stdout
    assert "Warning" not in listed.stderr, listed.stderr
