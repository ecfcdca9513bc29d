"""Shared protocol of the sparsesearch benchmarks (not part of the package, not run by tests).

One *cell* is (model, dataset, kept fraction, seed). For each (model, dataset, seed) the dense
model is trained once (``train_dense``) and every method of every kept fraction starts from a
copy of those weights, fine-tunes for the same number of epochs with the same loop
(``sparsesearch.train.fit``: SGD momentum 0.9, cosine schedule, batch 128, validation after
every epoch), and selects its learning rate on validation. Test accuracy is only reported.

Methods
  dense    no pruning (the starting point).
  global   ``torch.nn.utils.prune.global_unstructured`` (L1), amount chosen so that the
           remaining parameters (biases included) meet the same budget; fine-tuned with
           torch's prune hooks keeping the masks; lr tuned over ``lrs`` on validation.
  uniform, lamp, erk
           sparsesearch's allocations (``BudgetPlan.uniform/lamp/erk``, magnitude scores of
           the dense weights, one-shot) at each lr of ``lrs``. They are exactly the heuristic
           seed trials that ``search()`` enqueues first (``heuristic_lrs=lrs``), so they are
           read from the search's study instead of being trained twice: the best lr on
           validation is picked per heuristic and its stored recipe is replayed with
           ``apply_recipe`` to measure test accuracy (the replay's validation accuracy is
           checked against the trial's). Their wall time is the sum of their trials'
           durations.
  search   ``sparsesearch.search()`` with ``n_trials`` trials: the 4 × len(lrs) heuristic
           seeds above, then TPE over per-layer densities and the learning rate, with the
           median pruner. Its wall time is the whole ``search()`` call (seeds included).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.nn.utils import prune as torch_prune

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sparsesearch  # noqa: E402
from sparsesearch import count_params, find_layers, load_dataset, build_model  # noqa: E402
from sparsesearch.budget import plan_budget  # noqa: E402
from sparsesearch.recipe import Recipe, apply_recipe  # noqa: E402
from sparsesearch.train import NonFiniteLossError, evaluate, fit, train_dense  # noqa: E402

METHODS = ("dense", "global", "uniform", "lamp", "erk", "search")
HEURISTIC_METHODS = ("uniform", "lamp", "erk")
LABELS = {
    "dense": "dense",
    "global": "global magnitude (torch)",
    "uniform": "uniform",
    "lamp": "LAMP",
    "erk": "ERK",
    "search": "sparsesearch",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run (``--quick`` shrinks everything)."""

    models: tuple[tuple[str, str], ...] = (("lenet300", "mnist-5k"), ("lenet5", "mnist-5k"), ("digits-mlp", "digits"))
    fractions: tuple[float, ...] = (0.08, 0.02, 0.01)
    seeds: tuple[int, ...] = (0, 1, 2)
    # dense training per model: (epochs, lr); SGD momentum 0.9, weight decay, cosine, batch 128.
    # lenet5 diverges (NaN) at lr 0.05 over 8 epochs, so it trains at 0.02.
    dense: tuple[tuple[str, int, float], ...] = (("lenet300", 8, 0.05), ("lenet5", 8, 0.02), ("digits-mlp", 40, 0.1))
    dense_weight_decay: float = 5e-4
    ft_epochs: int = 2
    lrs: tuple[float, ...] = (0.03, 0.08, 0.2)
    lr_range: tuple[float, float] = (0.01, 0.3)
    n_trials: int = 20
    batch_size: int = 128
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dense_for(self, model: str) -> tuple[int, float]:
        for name, epochs, lr in self.dense:
            if name == model:
                return epochs, lr
        return 8, 0.05


QUICK = Config(
    models=(("digits-mlp", "digits"), ("lenet300", "mnist-5k")),
    fractions=(0.08, 0.01),
    seeds=(0, 1),
    dense=(("lenet300", 3, 0.05), ("lenet5", 2, 0.02), ("digits-mlp", 15, 0.1)),
    ft_epochs=1,
    lrs=(0.05, 0.2),
    n_trials=10,
)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    import optuna

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "sparsesearch": sparsesearch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sparsesearch", "plugins"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (+ uncommitted engine changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- dense -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dense:
    model_name: str
    data_name: str
    seed: int
    splits: Any
    model: torch.nn.Module
    seconds: float
    val: float
    test: float


def train_dense_model(model_name: str, data_name: str, seed: int, cfg: Config) -> Dense:
    splits = load_dataset(data_name, seed=seed)
    torch.manual_seed(seed)
    net = build_model(model_name, num_classes=splits.num_classes, input_shape=tuple(splits.input_shape))
    epochs, lr = cfg.dense_for(model_name)
    t0 = time.perf_counter()
    train_dense(net, splits, epochs=epochs, lr=lr, weight_decay=cfg.dense_weight_decay,
                batch_size=cfg.batch_size, seed=seed)
    seconds = time.perf_counter() - t0
    net.eval()
    return Dense(model_name, data_name, seed, splits, net, seconds,
                 evaluate(net, splits.val), evaluate(net, splits.test))


# -- torch global magnitude ------------------------------------------------------------------


def torch_global_prune(model: torch.nn.Module, budget_fraction: float) -> torch.nn.Module:
    """``global_unstructured`` (L1) over the weights of every Linear/Conv layer, removing just
    enough weights that all remaining parameters (biases included) fit the budget."""
    total = count_params(model).total
    budget = int(math.floor(budget_fraction * total))
    targets = [(layer.module, "weight") for layer in find_layers(model)]
    prunable = sum(m.weight.numel() for m, _ in targets)
    fixed = total - prunable
    amount = prunable - (budget - fixed)
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=int(amount))
    return model


def run_global(dense: Dense, fraction: float, cfg: Config) -> dict[str, Any]:
    runs = []
    t_all = time.perf_counter()
    for i, lr in enumerate(cfg.lrs):
        net = copy.deepcopy(dense.model)
        torch_global_prune(net, fraction)
        try:
            res = fit(net, dense.splits.train, epochs=cfg.ft_epochs, lr=lr, batch_size=cfg.batch_size,
                      seed=dense.seed * 1000 + i, val_data=dense.splits.val)
        except NonFiniteLossError:  # diverged at this lr: it loses the selection
            runs.append({"lr": lr, "val": 0.0, "test": 0.0, "params": count_params(net).remaining,
                         "diverged": True})
            continue
        runs.append({"lr": lr, "val": res.val_accuracy, "test": evaluate(net, dense.splits.test),
                     "params": count_params(net).remaining})
    seconds = time.perf_counter() - t_all
    best = max(runs, key=lambda r: r["val"])  # first on ties (lowest lr)
    return {"val": best["val"], "test": best["test"], "lr": best["lr"], "params": best["params"],
            "seconds": seconds, "runs": runs}


# -- search (and the heuristic seeds read from it) ----------------------------------------------


def search_space(cfg: Config) -> dict[str, Any]:
    return {"lr": list(cfg.lr_range), "epochs": cfg.ft_epochs, "optimizer": "sgd",
            "batch_size": cfg.batch_size, "heuristic_lrs": list(cfg.lrs)}


def run_search(dense: Dense, fraction: float, cfg: Config, *, n_trials: int | None = None,
               pruner: str = "median", heuristics: Iterable[str] | None = None,
               replay: bool = True, workdir: str | None = None) -> dict[str, Any]:
    """One ``search()`` on a copy of the dense model; returns the search's record and one
    record per heuristic seed (best lr on validation, test by replay)."""
    import optuna

    n_trials = cfg.n_trials if n_trials is None else n_trials
    kwargs: dict[str, Any] = {}
    if heuristics is not None:
        kwargs["heuristics"] = tuple(heuristics)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        result = sparsesearch.search(
            copy.deepcopy(dense.model), dense.splits, fraction, trained=True, n_trials=n_trials,
            seed=dense.seed, space=search_space(cfg), pruner=pruner,
            storage=f"sqlite:///{tmp}/study.db", study_name="bench", runs_dir=tmp, **kwargs,
        )
        seconds = time.perf_counter() - t0
        study = result.study
        trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    seeds = [t for t in complete if t.user_attrs.get("heuristic")]
    best_seed_val = max((t.value for t in seeds), default=float("nan"))
    trial_log = [
        {"number": t.number, "state": t.state.name, "value": t.value,
         "heuristic": t.user_attrs.get("heuristic"), "lr": t.params.get("lr"),
         "seconds": t.duration.total_seconds() if t.duration else None,
         "start": t.datetime_start.timestamp() if t.datetime_start else None,
         "complete": t.datetime_complete.timestamp() if t.datetime_complete else None,
         "epochs": len(t.intermediate_values), "params": t.user_attrs.get("params")}
        for t in trials
    ]
    out: dict[str, Any] = {
        "search": {
            "val": result.val_accuracy, "test": result.test_accuracy, "seconds": seconds,
            "params": result.params, "budget": result.budget_params, "total": result.total_params,
            "n_trials": len(trials), "complete": len(complete), "pruned": len(pruned), "failed": len(failed),
            "best_trial": result.best_trial.number,
            "best_is_seed": bool(result.best_trial.user_attrs.get("heuristic")),
            "best_heuristic": result.best_trial.user_attrs.get("heuristic"),
            "best_seed_val": best_seed_val,
            "lr": result.best_trial.params.get("lr"),
            "sparsity": result.best_trial.user_attrs.get("sparsity"),
            "trials": trial_log,
        }
    }
    if replay:
        for h in sorted({t.user_attrs["heuristic"] for t in seeds}):
            mine = [t for t in seeds if t.user_attrs["heuristic"] == h]
            best = max(mine, key=lambda t: (t.value, -t.number))
            recipe = Recipe.from_dict(best.user_attrs["recipe"])
            model = apply_recipe(dense.model, recipe, dense.splits)
            val = evaluate(model, dense.splits.val)
            out[h] = {
                "val": best.value, "test": evaluate(model, dense.splits.test),
                "lr": recipe.retrain.lr, "params": count_params(model).remaining,
                "seconds": sum(t.duration.total_seconds() for t in mine),
                "replay_val": val, "runs": [{"lr": t.params.get("lr"), "val": t.value} for t in mine],
                "sparsity": best.user_attrs.get("sparsity"),
            }
    return out


def run_cell(dense: Dense, fraction: float, cfg: Config) -> list[dict[str, Any]]:
    """All methods of one (model, data, seed, fraction): one record per method."""
    base = {"model": dense.model_name, "data": dense.data_name, "seed": dense.seed, "fraction": fraction}
    total = count_params(dense.model).total
    records = [{**base, "method": "dense", "val": dense.val, "test": dense.test, "seconds": dense.seconds,
                "params": total, "budget": int(math.floor(fraction * total)), "total": total}]
    log(f"{dense.model_name} {fraction:.0%} seed {dense.seed}: global magnitude (torch)")
    g = run_global(dense, fraction, cfg)
    records.append({**base, "method": "global", **g})
    log(f"{dense.model_name} {fraction:.0%} seed {dense.seed}: search ({cfg.n_trials} trials)")
    s = run_search(dense, fraction, cfg)
    for h in HEURISTIC_METHODS:
        if h in s:
            records.append({**base, "method": h, **s[h]})
    if "global" in s:  # sparsesearch's own global-threshold seed: kept for reference
        records.append({**base, "method": "global-ss", **s["global"]})
    records.append({**base, "method": "search", **s["search"]})
    budget = s["search"]["budget"]
    for r in records:
        r.setdefault("budget", budget)
        r.setdefault("total", total)
        if r["method"] != "dense" and r["params"] > budget:
            raise AssertionError(f"{r['method']} keeps {r['params']} > budget {budget}")
    srec = s["search"]
    log(f"  test: global {g['test']:.4f} lamp {s.get('lamp', {}).get('test', float('nan')):.4f} "
        f"search {srec['test']:.4f} (val {srec['val']:.4f}, best seed val {srec['best_seed_val']:.4f}, "
        f"{srec['pruned']} pruned) in {srec['seconds']:.0f}s")
    return records


# -- results ---------------------------------------------------------------------------------


def save_records(path: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def load_records(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    d = json.loads(path.read_text())
    return d["meta"], d["records"]


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values)


def pct(values: list[float]) -> str:
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def select(records: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]
