"""search() at its defaults against what a user would do instead, at equal fine-tuning compute.

One *cell* is (model, dataset, kept fraction, seed). Per (model, dataset, seed) the dense model
is trained once (search()'s own dense default: AdamW, lr 1e-3, auto epochs) and every method
starts from a copy of it.

  search     ``sparsesearch.search(dense, data, fraction, trained=True, seed=seed)`` with every
             other argument at its default. Its fine-tuning epochs ``E`` (screening + finalists,
             the study attribute ``epochs_trained``) set the compute of every baseline.
  uniform, global, lamp, erk
             sparsesearch's allocations (magnitude scores of the dense weights), one-shot, each
             fine-tuned by the same loop (``sparsesearch.train.fit``: AdamW, 5 % warm-up + cosine,
             batch 128) at 3 learning rates (1e-3, 3e-3, 1e-2) for ``E // 3`` epochs each: the
             best lr on validation is kept, its test accuracy reported.
  torch-l1   ``torch.nn.utils.prune.global_unstructured`` (L1) at the same budget, the same loop.
  pick       the heuristic a user would pick: of the five above, the one best on validation.
  gradual    LAMP with Zhu & Gupta gradual pruning (one warm-up + cosine schedule, prune events
             on the cubic schedule over the first half of the epochs), 3 lrs × ``E // 3`` epochs.

Test accuracy is only read for the model each method selects on validation. Usage::

    python benchmarks/equal_compute.py                 # the full grid, 2 processes
    python benchmarks/equal_compute.py --only lenet5:0.005 --seeds 0
    python benchmarks/equal_compute.py --render        # docs table from the stored results
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import prune as torch_prune

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sparsesearch  # noqa: E402
from sparsesearch import count_params, find_layers, load_dataset  # noqa: E402
from sparsesearch.budget import plan_budget  # noqa: E402
from sparsesearch.fidelity import ComputeBudget  # noqa: E402
from sparsesearch.plugins import get_strategy  # noqa: E402
from sparsesearch.recipe import Recipe, RetrainSettings, replay  # noqa: E402
from sparsesearch.score import compute_scores  # noqa: E402
from sparsesearch.search import prepare_dense_model  # noqa: E402
from sparsesearch.train import NonFiniteLossError, evaluate, fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "equal_compute.json"
LRS = (1e-3, 3e-3, 1e-2)
HEURISTICS = ("uniform", "global", "lamp", "erk")
BASELINES = (*HEURISTICS, "torch-l1")
GRID = {  # (model, data): kept fractions
    ("lenet5", "mnist-5k"): (0.02, 0.01, 0.005, 0.0025),
    ("lenet300", "mnist-5k"): (0.02, 0.01, 0.005),  # 0.25 % (666) is below its feasible 676
    ("cifar-resnet", "digits"): (0.1, 0.05),
}
SEEDS = (0, 1, 2)


def _dense(model: str, data: str, seed: int, runs: Path) -> tuple[torch.nn.Module, Any, float]:
    kwargs = {"depth": 8} if model == "cifar-resnet" else None
    net, splits = prepare_dense_model(model, data, seed=seed, runs_dir=runs, study_name=f"dense-{model}-{seed}",
                                      model_kwargs=kwargs)
    return net, splits, evaluate(net, splits.test)


def _finetune(net: torch.nn.Module, splits: Any, epochs: int, lr: float, seed: int) -> tuple[float, float]:
    try:
        res = fit(net, splits.train, epochs=epochs, lr=lr, optimizer="adamw", weight_decay=0.0,
                  seed=seed, val_data=splits.val, warmup=0.05)
    except NonFiniteLossError:
        return 0.0, 0.0
    return float(res.val_accuracy), evaluate(net, splits.test)


def _torch_l1(net: torch.nn.Module, fraction: float) -> torch.nn.Module:
    total = count_params(net).total
    budget = int(math.floor(fraction * total))
    targets = [(layer.module, "weight") for layer in find_layers(net)]
    prunable = sum(m.weight.numel() for m, _ in targets)
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured,
                                    amount=int(prunable - (budget - (total - prunable))))
    return net


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r["val"])  # first (lowest lr) on ties


def run_cell(model: str, data: str, fraction: float, seed: int, runs: Path,
             stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """One cell: search() and every baseline. With ``stored`` (a cell measured before), only
    search() runs again; the baselines are kept when search() spent the same epochs (they are
    given exactly that compute), else they run again too."""
    torch.set_num_threads(1)
    dense, splits, dense_test = _dense(model, data, seed, runs)
    out: dict[str, Any] = {"model": model, "data": data, "fraction": fraction, "seed": seed,
                           "dense_test": dense_test, "dense_val": evaluate(dense, splits.val)}
    out["search"] = _run_search(dense, data, fraction, seed)
    if stored is not None and stored["search"]["epochs"] == out["search"]["epochs"]:
        return {**stored, "search": out["search"]}
    return _baselines(out, dense, splits, fraction, seed)


def _run_search(dense: torch.nn.Module, data: str, fraction: float, seed: int) -> dict[str, Any]:
    # search() at its defaults (the dense model given trained, as a user with a model would)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = sparsesearch.search(copy.deepcopy(dense), data, fraction, trained=True, seed=seed,
                                runs_dir=tmp, study_name="bench",
                                model_kwargs=None)
        trials = r.study.trials
        return {
            "val": r.val_accuracy, "test": r.test_accuracy, "params": r.params,
            "epochs": r.epochs_trained, "seconds": time.perf_counter() - t0,
            "trials": len(trials), "final_from": r.best_trial.user_attrs.get("finalist_of"),
            "heuristic": r.best_trial.params.get("alloc:heuristic"),
            "temperature": r.best_trial.params.get("alloc:temperature"),
            "lr": r.best_trial.params.get("lr"),
        }


def _baselines(out: dict[str, Any], dense: torch.nn.Module, splits: Any, fraction: float,
               seed: int) -> dict[str, Any]:
    budget_epochs = out["search"]["epochs"]
    each = max(1, budget_epochs // len(LRS))
    layers = find_layers(dense)
    plan = plan_budget(dense, layers, fraction)
    scores = compute_scores(dense, layers, get_strategy("magnitude").strategy, data=splits.train, seed=seed)
    for h in HEURISTICS:
        keep = plan.heuristic(h, scores)
        runs_h = []
        t0 = time.perf_counter()
        for i, lr in enumerate(LRS):
            recipe = Recipe(strategy="magnitude", sparsity=plan.to_sparsity(keep), seed=seed * 1000 + i,
                            data_seed=seed, retrain=RetrainSettings(lr=lr, epochs=0, optimizer="adamw"))
            net = replay(dense, recipe, splits, scores=scores, retrain=False).model
            val, test = _finetune(net, splits, each, lr, seed * 1000 + i)
            runs_h.append({"lr": lr, "val": val, "test": test})
        out[h] = {**_best(runs_h), "epochs": each * len(LRS), "seconds": time.perf_counter() - t0,
                  "params": plan.params_for(keep)}
    runs_t = []
    t0 = time.perf_counter()
    for i, lr in enumerate(LRS):
        net = _torch_l1(copy.deepcopy(dense), fraction)
        val, test = _finetune(net, splits, each, lr, seed * 1000 + i)
        runs_t.append({"lr": lr, "val": val, "test": test})
    out["torch-l1"] = {**_best(runs_t), "epochs": each * len(LRS), "seconds": time.perf_counter() - t0}
    pick = max(BASELINES, key=lambda m: out[m]["val"])
    out["pick"] = {**out[pick], "method": pick}
    # LAMP with Zhu & Gupta gradual pruning, the same epochs and lr tuning
    keep = plan.heuristic("lamp", scores)
    steps = ComputeBudget().prune_steps_for(each)
    runs_g = []
    t0 = time.perf_counter()
    for i, lr in enumerate(LRS):
        recipe = Recipe(strategy="magnitude", sparsity=plan.to_sparsity(keep), seed=seed * 1000 + i,
                        data_seed=seed, retrain=RetrainSettings(
                            lr=lr, epochs=each, optimizer="adamw", prune_steps=steps,
                            schedule="gradual", warmup=0.05))
        try:
            res = replay(dense, recipe, splits, scores=scores)
            runs_g.append({"lr": lr, "val": res.history[-1], "test": evaluate(res.model, splits.test)})
        except NonFiniteLossError:
            runs_g.append({"lr": lr, "val": 0.0, "test": 0.0})
    out["gradual"] = {**_best(runs_g), "epochs": each * len(LRS), "steps": steps,
                      "seconds": time.perf_counter() - t0}
    return out


def _key(r: dict[str, Any]) -> str:
    return f"{r['model']}:{r['data']}:{r['fraction']}:{r['seed']}"


def load() -> dict[str, dict[str, Any]]:
    if RESULTS.is_file():
        return {_key(r): r for r in json.loads(RESULTS.read_text())["cells"]}
    return {}


def save(cells: dict[str, dict[str, Any]]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "sparsesearch": sparsesearch.__version__ if hasattr(sparsesearch, "__version__") else "",
            "command": "python benchmarks/equal_compute.py"}
    RESULTS.write_text(json.dumps({"meta": meta, "cells": sorted(cells.values(), key=_key)}, indent=1) + "\n")


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.mean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def render(cells: dict[str, dict[str, Any]]) -> str:
    methods = ("search", "pick", "gradual", *BASELINES)
    lines = [
        "| model / data | kept | seeds | dense | " + " | ".join(methods) + " | fine-tuning epochs (each method) | search − pick |",
        "|---|---|---|---|" + "---|" * len(methods) + "---|---|",
    ]
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in cells.values():
        groups.setdefault((r["model"], r["data"], r["fraction"]), []).append(r)
    for (model, data, fraction), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        diffs = [r["search"]["test"] - r["pick"]["test"] for r in rs]
        row = [f"{model} / {data}", f"{fraction * 100:g} %", str(len(rs)), _ms([r["dense_test"] for r in rs])]
        row += [_ms([r[m]["test"] for r in rs]) for m in methods]
        row += [f"{statistics.mean(r['search']['epochs'] for r in rs):.0f}", _ms(diffs)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- equal-compute:start -->", "<!-- equal-compute:end -->"


def doc_section(cells: dict[str, dict[str, Any]]) -> str:
    """The headline section of docs/benchmarks.md: protocol, table, command."""
    protocol = __doc__.split("Usage::")[0].strip().split("\n", 1)[1].strip()
    seeds = sorted({r["seed"] for r in cells.values()})
    return "\n".join([
        START,
        "## Equal compute: `search()` at its defaults against what a user would do instead",
        "",
        "Generated by `python benchmarks/equal_compute.py` (`make bench`); results in",
        "`benchmarks/results/equal_compute.json`. Test accuracy (%), mean ± std over seeds "
        f"{', '.join(map(str, seeds))}; every baseline used the same fine-tuning epochs as the search "
        "(`epochs each` = the search's total; the baselines spent them as 3 learning rates × a third).",
        "",
        render(cells),
        "",
        "Protocol (from the script's docstring):",
        "",
        "```",
        protocol,
        "```",
        END,
    ])


def write_doc(cells: dict[str, dict[str, Any]]) -> None:
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    section = doc_section(cells)
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        head, _, rest = text.partition("\n")
        text = head + "\n\n" + section + "\n" + rest
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    ap.add_argument("--only", nargs="*", default=None, help="model:fraction cells, e.g. lenet5:0.005")
    ap.add_argument("--render", action="store_true", help="only print the table of stored results")
    ap.add_argument("--redo", action="store_true", help="recompute cells already stored")
    ap.add_argument("--redo-search", action="store_true",
                    help="run search() again in stored cells, keeping their baselines where it spent "
                         "the same epochs (after a change to search() alone)")
    ap.add_argument("--doc", action="store_true", help="only rewrite the docs/benchmarks.md section")
    args = ap.parse_args(argv)
    cells = load()
    if args.render:
        print(render(cells))
        return 0
    if args.doc:
        write_doc(cells)
        return 0
    todo = []
    for (model, data), fractions in GRID.items():
        for f in fractions:
            if args.only is not None and f"{model}:{f}" not in args.only and model not in args.only:
                continue
            for seed in args.seeds:
                key = f"{model}:{data}:{f}:{seed}"
                if args.redo or args.redo_search or key not in cells:
                    todo.append((model, data, f, seed))
    runs = ROOT / "benchmarks" / "results" / "runs"
    # the dense models first, one process per (model, seed), so the cells share the cache
    with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(_dense_only, sorted({(m, d, s) for m, d, _, s in todo}), [runs] * len(todo)))
        futures = {pool.submit(run_cell, m, d, f, s, runs,
                               cells.get(f"{m}:{d}:{f}:{s}") if args.redo_search else None): (m, d, f, s)
                   for m, d, f, s in todo}
        for fut in cf.as_completed(futures):
            r = fut.result()
            cells[_key(r)] = r
            save(cells)
            print(f"{_key(r)}: search {r['search']['test']:.4f} ({r['search']['epochs']} ep) "
                  f"pick {r['pick']['method']} {r['pick']['test']:.4f} gradual {r['gradual']['test']:.4f} "
                  f"dense {r['dense_test']:.4f}", flush=True)
    print(render(cells))
    write_doc(cells)
    return 0


def _dense_only(cell: tuple[str, str, int], runs: Path) -> None:
    torch.set_num_threads(1)
    _dense(cell[0], cell[1], cell[2], runs)


if __name__ == "__main__":
    raise SystemExit(main())
