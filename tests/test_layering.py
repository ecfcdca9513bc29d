"""The package's layers, kept by a test (issue 13; the order is in docs/design.md, "Layers").

Every module of ``sparsesearch/`` is parsed with ``ast`` (function-local imports included) and

* the import graph between sparsesearch modules must have no cycle,
* no module may import a module of a higher layer (its own layer or lower ones only),
* every module must be placed in ``LAYERS`` (a new module has to be given a layer),
* every import inside a function needs a comment saying why it is local (on its line or the
  line just above): a heavy or optional dependency, for example. An import that would be upward
  at module level is upward inside a function too: that is a bug, not a comment.

The checker is a plain function over ``{path: source}``, so the self-tests at the bottom run
it on planted cycles and upward imports and show that it can fail.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

PACKAGE = "sparsesearch"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

LAYER_NAMES = {
    0: "contract",
    1: "data/models",
    2: "training loop",
    3: "engine",
    4: "replay",
    5: "study",
    6: "search",
    7: "workers",
    8: "application",
}

# module (top-level name inside the package; a subpackage counts as one module) -> layer.
# Lowest first; a module may import its own layer or lower ones.
LAYERS: dict[str, int] = {
    # L0 contract
    "errors": 0, "hookspecs": 0, "strategy": 0, "plugins": 0, "_optuna": 0, "options": 0,
    # L1 data/models
    "data": 1, "models": 1,
    # L2 training loop
    "train": 2,
    # L3 engine
    "layers": 3, "score": 3, "masks": 3, "budget": 3, "macs": 3, "compact": 3, "prune": 3, "latency": 3,
    # L4 replay
    "recipe": 4,
    # L5 study
    "record": 5, "interrupts": 5, "write_behind": 5, "space": 5, "sampler": 5, "storage": 5, "runner": 5, "fidelity": 5,
    # L6 search
    "search": 6,
    # L7 workers
    "workers": 7,
    # L8 application
    "config": 8, "report": 8, "export": 8, "progress": 8, "cli": 8, "testing": 8,
    "__init__": 8, "__main__": 8,
}

# A comment made only of these says nothing about why an import is local.
_NOT_A_REASON = re.compile(r"#\s*(noqa\b[:\w, ]*|type:\s*ignore\S*|pragma:.*|pylint:.*)\s*$")


def module_of(rel: Path) -> str:
    """``compact/graph.py`` -> ``compact``; ``budget.py`` -> ``budget``; ``__init__.py`` ->
    ``__init__``."""
    parts = rel.with_suffix("").parts
    return parts[0]


def _dotted(rel: Path) -> list[str]:
    """The dotted name of a file inside the package, without the package: ``a/b.py`` ->
    ``["a", "b"]``, ``a/__init__.py`` -> ``["a"]``, ``__init__.py`` -> ``[]``."""
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return parts


def _targets(node: ast.AST, rel: Path, modules: set[str]) -> list[str]:
    """The sparsesearch modules an import statement imports (possibly none)."""
    out: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] != PACKAGE:
                continue
            out.append(parts[1] if len(parts) > 1 else "__init__")
        return out
    assert isinstance(node, ast.ImportFrom)
    if node.level:  # relative: resolve against the file's own package
        pkg = _dotted(rel) if rel.name == "__init__.py" else _dotted(rel)[:-1]
        up = node.level - 1
        if up > len(pkg):
            return out
        base = pkg[: len(pkg) - up] + (node.module.split(".") if node.module else [])
    else:
        if not node.module:
            return out
        parts = node.module.split(".")
        if parts[0] != PACKAGE:
            return out
        base = parts[1:]
    if base:
        out.append(base[0])
    else:  # from sparsesearch import x, y: a module each, or a name of __init__
        for alias in node.names:
            out.append(alias.name if alias.name in modules else "__init__")
    return out


def _comment_lines(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    return comments


def _is_reason(comment: str | None) -> bool:
    return bool(comment) and not _NOT_A_REASON.fullmatch(comment.strip()) and comment.strip("# ") != ""


def _local_imports(tree: ast.AST) -> list[ast.stmt]:
    """Import statements inside a def (at any depth)."""
    found: list[ast.stmt] = []

    def visit(node: ast.AST, in_def: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_def:
                found.append(child)
            visit(child, in_def or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one
    module, found with Tarjan's algorithm; sorted, so the message is stable."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[set[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            strong(v)

    cycles = []
    for comp in sccs:
        start = min(comp)
        # shortest path start -> ... -> start inside the component (BFS)
        prev: dict[str, str] = {}
        queue = [start]
        seen = {start}
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph.get(v, ())):
                if w == start:
                    end = v
                    break
                if w in comp and w not in seen:
                    seen.add(w)
                    prev[w] = v
                    queue.append(w)
        path = [start]
        v = end
        while v is not None and v != start:
            path.append(v)
            v = prev[v]
        cycles.append([start] + path[:0:-1] + [start])
    return sorted(cycles)


def check_package(sources: dict[Path, str], layers: dict[str, int]) -> list[str]:
    """Everything wrong with a package given as ``{path relative to the package: source}``:
    unplaced modules, cycles, upward imports and local imports without a reason."""
    problems: list[str] = []
    modules = {module_of(rel) for rel in sources}
    for mod in sorted(modules - set(layers)):
        problems.append(f"module {mod!r} is not in the layer table (LAYERS): give it a layer")
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for rel, source in sorted(sources.items()):
        tree = ast.parse(source, filename=str(rel))
        mod = module_of(rel)
        where = f"{PACKAGE}/{rel.as_posix()}"
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, rel, modules):
                if target == mod:
                    continue
                graph[mod].add(target)
                if mod in layers and target in layers and layers[target] > layers[mod]:
                    lo, hi = layers[mod], layers[target]
                    problems.append(
                        f"{where}:{node.lineno}: upward import: {mod} (L{lo} {LAYER_NAMES.get(lo, '?')}) "
                        f"imports {target} (L{hi} {LAYER_NAMES.get(hi, '?')})")
                if target not in layers and target not in modules:
                    problems.append(f"{where}:{node.lineno}: imports {PACKAGE}.{target}, "
                                    "which is not a module of the package")
        comments = _comment_lines(source)
        lines = source.splitlines()
        for node in _local_imports(tree):
            own = [comments.get(n) for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)]
            above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            if any(_is_reason(c) for c in own) or (above.startswith("#") and _is_reason(above)):
                continue
            problems.append(f"{where}:{node.lineno}: function-local import without a comment "
                            f"saying why it is local: {lines[node.lineno - 1].strip()}")
    for cycle in find_cycle(graph):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def package_sources(root: Path = ROOT) -> dict[Path, str]:
    return {p.relative_to(root): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))}


# ----------------------------------------------------------------------------------- the package


def test_every_module_has_a_layer():
    sources = package_sources()
    modules = {module_of(rel) for rel in sources}
    assert modules - set(LAYERS) == set(), "give the new modules a layer in LAYERS"
    assert set(LAYERS) - modules == set(), "LAYERS names modules that no longer exist"


def test_package_layering():
    problems = check_package(package_sources(), LAYERS)
    assert not problems, f"{len(problems)} layering problem(s):\n" + "\n".join(problems)


def test_layer_table_is_documented():
    design = (ROOT.parent / "docs" / "design.md").read_text(encoding="utf-8")
    assert "## Layers" in design and "tests/test_layering.py" in design
    section = design.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for mod, layer in LAYERS.items():
        if mod in ("__init__", "__main__"):
            continue
        line = next((ln for ln in section.splitlines() if f"L{layer} " in ln), "")
        assert re.search(rf"\b{re.escape(mod)}\b", line), f"docs/design.md Layers: {mod} not in L{layer}"
    table = design.split("## Layers", 1)[0]
    for mod in LAYERS:
        name = f"{mod}/" if (ROOT / mod).is_dir() else f"{mod}.py"
        assert f"`{name}`" in table, f"docs/design.md: the module table has no row for {name}"


# ------------------------------------------------------------------------- the checker can fail


_SELF_LAYERS = {"low": 0, "mid": 1, "high": 2, "__init__": 2, "other": 1}


def _write(tmp_path: Path, files: dict[str, str]) -> dict[Path, str]:
    pkg = tmp_path / PACKAGE
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package_sources(pkg)


def test_checker_passes_a_clean_package(tmp_path):
    sources = _write(tmp_path, {
        "__init__.py": "from sparsesearch.high import h\n",
        "low.py": "import os\n",
        "mid.py": "from sparsesearch import low\nimport sparsesearch.low\n",
        "other.py": "from sparsesearch.mid import m\n",
        "high.py": (
            "from sparsesearch.mid import m\n"
            "def f():\n"
            "    # matplotlib is optional and slow to import\n"
            "    import matplotlib\n"
            "    from sparsesearch.low import x  # a reason, on its own line\n"
        ),
    })
    assert check_package(sources, _SELF_LAYERS) == []


def test_checker_fails_on_a_planted_cycle(tmp_path):
    sources = _write(tmp_path, {
        "__init__.py": "",
        "low.py": "",
        "high.py": "",
        "mid.py": "from sparsesearch.other import o\n",
        "other.py": "def f():\n    # breaks the cycle\n    from sparsesearch import mid\n",
    })
    problems = check_package(sources, _SELF_LAYERS)
    assert problems == ["import cycle: mid -> other -> mid"]


def test_checker_fails_on_a_planted_upward_import(tmp_path):
    sources = _write(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    # a reason does not make it legal\n    from sparsesearch.high import h\n",
        "mid.py": "import sparsesearch.high as h\n",
        "high.py": "",
        "other.py": "from sparsesearch import list_things\n",  # a name of __init__ (L2)
    })
    problems = check_package(sources, _SELF_LAYERS)
    assert len(problems) == 3, problems
    assert "sparsesearch/low.py:3: upward import: low (L0 contract) imports high (L2 training loop)" in problems
    assert any("mid (L1 data/models) imports high (L2" in p for p in problems)
    assert any("other (L1 data/models) imports __init__ (L2" in p for p in problems)


def test_checker_fails_on_an_unplaced_module_and_an_uncommented_local_import(tmp_path):
    sources = _write(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    import json\n    import re  # noqa: F401\n",
        "newmod/__init__.py": "from . import part\n",
        "newmod/part.py": "from .. import low\n",
    })
    problems = check_package(sources, _SELF_LAYERS)
    assert "module 'newmod' is not in the layer table (LAYERS): give it a layer" in problems
    assert any("low.py:2: function-local import without a comment" in p for p in problems)
    assert any("low.py:3: function-local import without a comment" in p for p in problems)
    assert len(problems) == 3, problems


def test_checker_resolves_relative_imports_in_subpackages(tmp_path):
    sources = _write(tmp_path, {
        "__init__.py": "",
        "low.py": "",
        "high.py": "",
        "mid/__init__.py": "from .graph import g\nfrom ..high import h\n",
        "mid/graph.py": "from . import other\nfrom sparsesearch.mid import x\n",
    })
    problems = check_package(sources, {**_SELF_LAYERS, "mid": 1})
    assert problems == ["sparsesearch/mid/__init__.py:2: upward import: mid (L1 data/models) "
                        "imports high (L2 training loop)"]
