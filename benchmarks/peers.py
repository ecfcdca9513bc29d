"""Structured pruning side by side with the peers: Torch-Pruning and NVIDIA ModelOpt's FastNAS.

One *cell* is (model, target, seed, method). Per (model, seed) the dense model is trained once
(``search()``'s own dense default: AdamW, lr 1e-3, weight decay 0.01, auto epochs) and every
method starts from a copy of it.

  models     bn-cnn / mnist-5k: 4 × (3×3 conv + BatchNorm + ReLU), 2 max-pools, Flatten →
             Linear(3136, 128) → Linear(128, 10); 468,202 parameters, 18.7 M MACs per sample.
             resnet8 / digits: sparsesearch's ``cifar-resnet`` at depth 8 (BN basic blocks,
             1×1-conv shortcuts), width 16, on the 8×8 digits; 77,754 parameters, 0.76 M MACs.
  targets    30 % and 10 % of the parameters, 40 % and 15 % of the MACs (counted on the
             compacted model: ``count_params`` and ``sparsesearch.count_macs``, Linear and Conv
             MACs per sample).
  tp-uniform, tp-global
             Torch-Pruning 1.6 ``MetaPruner`` with ``MagnitudeImportance(p=1)``, the classifier
             ignored, one shot, uniform (``global_pruning=False``) or global; its
             ``pruning_ratio`` is bisected (14 steps) to the largest model within the target.
  tp-uniform-r8, tp-global-r8
             the same with ``round_to=8`` (channel counts in multiples of 8, Torch-Pruning's
             own option, its best use beside sparsesearch-m8); digits only so far. A target
             below what blocks of 8 allow has no cell (no ratio fits).
  fastnas    ModelOpt ``mtp.prune(mode=[("fastnas", ...)])`` with channel/feature divisor 4
             (the default 32 leaves a 32-channel layer no choice), ``constraints={"params": N}``
             or ``{"flops": "P%"}``, score = validation accuracy, BatchNorm recalibrated on the
             training split (``mtp.prune`` returns the exported, plain subnet).
  finetune   every peer's pruned model gets the same fine-tuning: ``sparsesearch.train.fit``
             (AdamW, no weight decay, 5 % warm-up + cosine, batch 128) at 3 learning rates
             (3e-4, 1e-3, 3e-3 on mnist-5k; 1e-3, 3e-3, 1e-2 on digits) × ``E`` = 8 epochs; the best lr on validation is kept, its test
             accuracy reported.
  sparsesearch
             ``sparsesearch.search(dense, (train, val, test), target, strategies="l1-filter",
             trained=True, seed=seed, compute=3 × E = 24, budget_metric="params" | "macs")``: the
             same fine-tuning epochs in total as a peer's three runs, spent as it chooses.
  sparsesearch-m8
             the same with ``space={"channel_multiple": 8}``: every layer keeps a multiple of
             8 channels (or all of them); compare it with the ``-r8`` Torch-Pruning methods.
  sparsesearch-lat, sparsesearch-m8-lat
             the same two with ``latency=True``: the fastest of the heuristics' budget-filling
             allocations (timed compacted on this machine before any training, batch 64) seed
             the study, and of models within validation noise the faster is kept.

Every number is measured on the compacted model: parameters, MACs, % of the target used, CPU
latency at batch 1 and 64 (``torch.utils.benchmark`` ``blocked_autorange``, 5 rounds
interleaved with the dense model, medians; reported as the ratio to the dense model, which
runs in the same rounds; ``--latency`` re-times every method's model of a cell in the same rounds),
and wall time (pruning or search, fine-tuning). One torch thread.
Usage::

    python benchmarks/peers.py                          # the full grid (resumable)
    python benchmarks/peers.py --quick                  # resnet8 at 15 % MACs, 1 seed, 3 epochs per lr
    python benchmarks/peers.py --only bn-cnn:params0.1 --methods fastnas --seeds 0
    python benchmarks/peers.py --latency                # re-time all stored models of a cell together
    python benchmarks/peers.py --render                 # docs table from the stored results
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import copy
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sparsesearch  # noqa: E402
from sparsesearch import count_macs, count_params, load_dataset, record  # noqa: E402
from sparsesearch.latency import interleaved_latency  # noqa: E402
from sparsesearch.search import prepare_dense_model  # noqa: E402
from sparsesearch.train import NonFiniteLossError, evaluate, fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
QUICK_RESULTS = ROOT / "benchmarks" / "results" / "peers-quick.json"
RUNS = ROOT / "benchmarks" / "results" / "runs" / "peers"  # dense cache, models; beside --results
MODELS = {"bn-cnn": "mnist-5k", "resnet8": "digits"}
TARGETS = (("params", 0.3), ("params", 0.1), ("macs", 0.4), ("macs", 0.15))
PEERS = ("tp-uniform", "tp-global", "fastnas", "tp-uniform-r8", "tp-global-r8")  # -r8: round_to=8
SEARCHES = ("sparsesearch", "sparsesearch-m8", "sparsesearch-lat", "sparsesearch-m8-lat")
# -m8: space.channel_multiple = 8; -lat: latency=True (the faster of budget-filling models, measured)
METHODS = (*PEERS, *SEARCHES)
SEEDS = (0, 1, 2)
# the peers' learning-rate grid per model, centred on where they pick: on digits every peer took
# the top of (3e-4, 1e-3, 3e-3), so its grid is one step up
LRS = {"bn-cnn": (3e-4, 1e-3, 3e-3), "resnet8": (1e-3, 3e-3, 1e-2)}
EPOCHS = 8          # per learning rate: a peer fine-tunes 3 × 8 = 24 epochs, the search gets 24
QUICK_EPOCHS = 3    # the search's compute is then 9 epochs: less leaves it no complete trial
FASTNAS_DIVISOR = 4
TP_STEPS = 14
MODEL_PREFIX = ""  # "quick-" for --quick, whose models must not replace the full run's


class BNCNN(nn.Module):
    """4 × (conv + BN + ReLU), 2 max-pools, Flatten → Linear → Linear (468,202 parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
        self.features = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2),
                                      *block(32, 64), *block(64, 64), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(model: str, splits: Any) -> nn.Module:
    if model == "bn-cnn":
        return BNCNN(splits.num_classes)
    return sparsesearch.build_model("cifar-resnet", num_classes=splits.num_classes,
                                    input_shape=tuple(splits.input_shape), depth=8)


def classifier(net: nn.Module) -> nn.Module:
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1]


# -- dense -------------------------------------------------------------------------------------


def dense_model(model: str, seed: int) -> tuple[nn.Module, Any]:
    """The dense model of (model, seed), trained once (cached under RUNS) by search()'s default."""
    data = MODELS[model]
    splits = load_dataset(data, seed=seed)
    torch.manual_seed(seed)
    net = build(model, splits)
    net, splits = prepare_dense_model(net, data, seed=seed, trained=False, runs_dir=RUNS,
                                      study_name=f"dense-{model}-{seed}")
    return net.eval(), splits


def example(splits: Any, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, *splits.input_shape)


def measure(net: nn.Module, splits: Any) -> dict[str, int]:
    return {"params": int(count_params(net).total), "macs": int(count_macs(net, example(splits)))}


# -- the shared fine-tuning ------------------------------------------------------------------


def finetune(net: nn.Module, splits: Any, epochs: int, seed: int, lrs: tuple[float, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """The same fine-tuning for every peer: AdamW at each lr of ``lrs`` for ``epochs``; the best
    on validation (the lowest lr on ties) is returned with its test accuracy."""
    best: tuple[float, nn.Module, dict[str, Any]] | None = None
    runs = []
    for i, lr in enumerate(lrs):
        m = copy.deepcopy(net)
        try:
            res = fit(m, splits.train, epochs=epochs, lr=lr, optimizer="adamw", weight_decay=0.0,
                      seed=seed * 1000 + i, val_data=splits.val, warmup=0.05)
            val = float(res.val_accuracy)
        except NonFiniteLossError:
            val = 0.0
        m.eval()
        runs.append({"lr": lr, "val": val})
        if best is None or val > best[0]:
            best = (val, m, runs[-1])
    assert best is not None
    _, m, run = best
    return m, {"val": run["val"], "test": evaluate(m, splits.test), "lr": run["lr"], "runs": runs,
               "epochs": epochs * len(lrs)}


# -- Torch-Pruning -----------------------------------------------------------------------------


def tp_prune(dense: nn.Module, splits: Any, kind: str, budget: int, global_pruning: bool,
             round_to: int | None = None) -> tuple[nn.Module, dict]:
    """MetaPruner (L1 magnitude), one shot; the pruning ratio bisected to the largest model
    whose ``kind`` count fits ``budget``; ``round_to`` rounds channel counts to its multiples
    (Torch-Pruning's own option, for the ``-r8`` methods)."""
    import torch_pruning as tp

    x = example(splits)

    def pruned(ratio: float) -> nn.Module | None:
        m = copy.deepcopy(dense)
        try:
            pruner = tp.pruner.MetaPruner(
                m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                global_pruning=global_pruning, ignored_layers=[classifier(m)], max_pruning_ratio=0.95,
                round_to=round_to)
            pruner.step()
            m(x)
        except Exception:  # a global ratio that empties a layer: treated as too small a model
            return None
        return m

    lo, hi, best, best_ratio = 0.0, 0.95, None, None
    for _ in range(TP_STEPS):
        mid = (lo + hi) / 2
        m = pruned(mid)
        if m is not None and measure(m, splits)[kind] <= budget:
            hi, best, best_ratio = mid, m, mid
        elif m is None:
            hi = mid
        else:
            lo = mid
    if best is None:  # (with round_to, the blocks' minimum can exceed the target: infeasible)
        raise RuntimeError(f"torch-pruning found no model within {kind} {budget}")
    return best.eval(), {"ratio": best_ratio}


# -- FastNAS -----------------------------------------------------------------------------------


def fastnas_prune(dense: nn.Module, splits: Any, kind: str, budget: int, fraction: float,
                  workdir: str) -> tuple[nn.Module, dict]:
    import modelopt.torch.prune as mtp

    d = FASTNAS_DIVISOR
    config = {
        "nn.Conv2d": {"*": {"channel_divisor": d}},
        "nn.Linear": {"*": {"feature_divisor": d}},
        "nn.BatchNorm2d": {"*": {"feature_divisor": d}},
    }
    loader = torch.utils.data.DataLoader(splits.train, batch_size=128, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    constraints = {"params": int(budget)} if kind == "params" else {"flops": f"{fraction * 100:g}%"}
    model = copy.deepcopy(dense)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _state = mtp.prune(
            model, mode=[("fastnas", config)], constraints=constraints, dummy_input=example(splits),
            config={"data_loader": loader, "score_func": lambda m: evaluate(m, splits.val),
                    "checkpoint": os.path.join(workdir, "fastnas.pth"), "verbose": False})
    return model.eval(), {"constraints": constraints}


# -- sparsesearch ------------------------------------------------------------------------------


def run_search(dense: nn.Module, splits: Any, kind: str, fraction: float, seed: int, epochs: int,
               channel_multiple: int = 1, latency: bool = False) -> tuple[nn.Module, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        r = sparsesearch.search(copy.deepcopy(dense), (splits.train, splits.val, splits.test), fraction,
                                strategies="l1-filter", trained=True, seed=seed, compute=epochs,
                                budget_metric=kind, runs_dir=tmp, study_name="bench",
                                space={"channel_multiple": channel_multiple}, latency=latency)
        small = sparsesearch.compact(r.model, example_input=example(splits, 2))
        info = {"val": r.val_accuracy, "test": r.test_accuracy, "epochs": r.epochs_trained,
                "trials": len(r.study.trials), "budget_reported": r.budget_params,
                "params_reported": r.params, "compact_fallback": bool(small.fallback),
                "heuristic": r.best_trial.params.get("alloc:heuristic"),
                "temperature": r.best_trial.params.get("alloc:temperature"),
                "latency_in_search": r.latency,  # -lat: the chosen model's, as the search timed it
                "latency_candidates": r.study.user_attrs.get(record.LATENCY_CANDIDATES),
                "lr": r.best_trial.params.get("lr"),
                "sparsesearch_rev": _rev(),
                # the finalist's training (the search's fine-tuning); the rest is setup + screening
                "seconds_final": sum((t.duration.total_seconds() for t in r.study.trials
                                      if t.duration and t.user_attrs.get(record.PHASE) == record.FINAL), 0.0)}
    return small.model.eval(), info


def _rev() -> str:
    """The sparsesearch code the search ran (``SPARSESEARCH_REV`` for a snapshot outside git)."""
    import subprocess
    if os.environ.get("SPARSESEARCH_REV"):
        return os.environ["SPARSESEARCH_REV"]
    try:
        return subprocess.run(["git", "log", "--oneline", "-1"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


# -- one cell ----------------------------------------------------------------------------------


def budget_of(dense: nn.Module, splits: Any, kind: str, fraction: float) -> int:
    return int(math.floor(fraction * measure(dense, splits)[kind]))


def run_cell(model: str, kind: str, fraction: float, seed: int, method: str, epochs: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    dense, splits = dense_model(model, seed)
    dense_counts = measure(dense, splits)
    budget = budget_of(dense, splits, kind, fraction)
    out: dict[str, Any] = {"model": model, "data": MODELS[model], "kind": kind, "fraction": fraction,
                           "seed": seed, "method": method, "budget": budget,
                           "dense": {**dense_counts, "val": evaluate(dense, splits.val),
                                     "test": evaluate(dense, splits.test)}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if method.startswith("tp-"):
            pruned, info = tp_prune(dense, splits, kind, budget, method.startswith("tp-global"),
                                    round_to=8 if method.endswith("-r8") else None)
        elif method == "fastnas":
            pruned, info = fastnas_prune(dense, splits, kind, budget, fraction, tmp)
        elif method in SEARCHES:
            final, info = run_search(dense, splits, kind, fraction, seed, epochs * len(LRS[model]),
                                     channel_multiple=8 if "-m8" in method else 1,
                                     latency=method.endswith("-lat"))
        else:
            raise SystemExit(f"unknown method {method!r}")
    t_prune = time.perf_counter() - t0
    if method in SEARCHES:
        out.update(info)
        out["seconds_search"] = t_prune
        out["seconds_finetune"] = 0.0
    else:
        out["pruned_val_before_finetune"] = evaluate(pruned, splits.val)
        t1 = time.perf_counter()
        final, ft = finetune(pruned, splits, epochs, seed, LRS[model])
        out.update(info)
        out.update(ft)
        out["seconds_search"] = t_prune
        out["seconds_finetune"] = time.perf_counter() - t1
    out["seconds"] = out["seconds_search"] + out["seconds_finetune"]
    counts = measure(final, splits)
    out.update(counts)
    out["budget_used"] = counts[kind] / budget
    out["latency"] = {}
    for b in (1, 64):
        lat = interleaved_latency({"dense": dense, "pruned": final}, example(splits, b) + 0.1, rounds=5)
        out["latency"][f"b{b}"] = {"dense": lat["dense"][0], "pruned": lat["pruned"][0],
                                   "ratio": lat["pruned"][0] / lat["dense"][0]}
    RUNS.mkdir(parents=True, exist_ok=True)
    torch.save(final, _model_file(out))  # for the joint latency pass
    return out


# -- results -----------------------------------------------------------------------------------


def _model_file(r: dict[str, Any]) -> Path:
    return RUNS / f"{MODEL_PREFIX}{_key(r).replace(':', '_')}.pt"


def _key(r: dict[str, Any]) -> str:
    return f"{r['model']}:{r['kind']}{r['fraction']}:{r['seed']}:{r['method']}"


def stored_model(r: dict[str, Any], splits: Any) -> nn.Module | None:
    """The model cell ``r`` saved under RUNS (eval mode), or None when there is none or the file
    holds another run's model (its params/MACs are not the cell's)."""
    f = _model_file(r)
    if not f.is_file():
        return None
    net = torch.load(f, weights_only=False).eval()  # this benchmark's own files (whole modules)
    got = measure(net, splits)
    return net if (got["params"], got["macs"]) == (r["params"], r["macs"]) else None


def selected(only: list[str] | None, model: str, kind: str, fraction: float) -> bool:
    """Whether ``--only`` (models or model:target cells; None: all) takes this target."""
    return only is None or model in only or f"{model}:{kind}{fraction}" in only


def load(path: Path) -> dict[str, dict[str, Any]]:
    if path.is_file():
        return {_key(r): r for r in json.loads(path.read_text())["cells"]}
    return {}


def save(path: Path, new: dict[str, dict[str, Any]], epochs: int) -> None:
    """Write the cells ``new`` into what the file holds now (another run may share the file:
    only the cells this run measured replace stored ones)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    with FileLock(str(RUNS / f"{path.name}.lock")):  # under runs/: ignored by git
        merged = load(path)
        merged.update(new)
        _write(path, merged, epochs)


def _write(path: Path, cells: dict[str, dict[str, Any]], epochs: int) -> None:
    versions = {}
    for dist in ("torch", "torch-pruning", "nvidia-modelopt", "optuna"):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = None
    meta = {"versions": versions, "sparsesearch": sparsesearch.__version__, "epochs_per_lr": epochs,
            "lrs": {k: list(v) for k, v in LRS.items()}, "command": "python benchmarks/peers.py"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "cells": sorted(cells.values(), key=_key)}, indent=1) + "\n")
    os.replace(tmp, path)


def _ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "–"
    m = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _count(values: list[float], unit: str) -> str:
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    if unit == "M":
        return f"{m / 1e6:.2f} M" + (f" ± {s / 1e6:.2f}" if len(values) > 1 else "")
    return f"{m / 1e3:.1f} k" + (f" ± {s / 1e3:.1f}" if len(values) > 1 else "")


def render(cells: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model / data | target | method | seeds | test % | params | MACs | % of target used "
        "| latency b1 (× dense) | latency b64 (× dense) | pruning / search s | fine-tuning s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in cells.values():
        groups.setdefault((r["model"], r["kind"], r["fraction"], r["method"]), []).append(r)
    kinds = {"params": 0, "macs": 1}
    order = sorted(groups, key=lambda k: (k[0], kinds[k[1]], -k[2], METHODS.index(k[3])))
    last = None
    for g in order:
        rs = groups[g]
        model, kind, fraction, method = g
        dense = [r["dense"]["test"] for r in rs]
        head = (f"{model} / {MODELS[model]}", f"{fraction * 100:g} % {kind}")
        if last != g[:3]:
            lines.append(f"| {head[0]} | {head[1]} | dense | {len(rs)} | {_ms(dense, 100)} | "
                         f"{_count([r['dense']['params'] for r in rs], 'k')} | "
                         f"{_count([r['dense']['macs'] for r in rs], 'M')} | – | 1 | 1 | – | – |")
        last = g[:3]
        lines.append("| " + " | ".join([
            head[0], head[1], method, str(len(rs)), _ms([r["test"] for r in rs], 100),
            _count([r["params"] for r in rs], "k"), _count([r["macs"] for r in rs], "M"),
            _ms([r["budget_used"] for r in rs], 100) + _over(rs),
            _ms([r["latency"]["b1"]["ratio"] for r in rs], 1, 2),
            _ms([r["latency"]["b64"]["ratio"] for r in rs], 1, 2),
            _ms([r["seconds_search"] for r in rs], 1, 0),
            _ms([r["seconds_finetune"] for r in rs], 1, 0) if method not in SEARCHES else (
                f"(in search: final {_ms([r['seconds_final'] for r in rs], 1, 0)})"
                if all("seconds_final" in r for r in rs) else "(in search)"),
        ]) + " |")
    return "\n".join(lines)


def _over(rs: list[dict[str, Any]]) -> str:
    """" (N over, max X)" when N of the seeds' models keep more than the target (FastNAS's constraint
    is approximate): a mean of the % used would hide it."""
    n = sum(r["budget_used"] > 1.0 for r in rs)
    return f" ({n} over, max {100 * max(r['budget_used'] for r in rs):.1f})" if n else ""


def _summary_row(model: str, kind: str, fraction: float, by: dict[str, dict[int, dict[str, Any]]],
                 ss: str) -> str | None:
    """One row of :func:`render_summary`: search variant ``ss`` against the peers measured on
    all of its seeds (None without cells, or without FastNAS's)."""
    # the peers measured on every seed of the search (the -r8 ones ran on digits only, and a
    # target below their blocks' minimum has no cell)
    seeds = set(by[ss])
    peers = [m for m in PEERS if set(by.get(m, {})) >= seeds]
    if not seeds or "fastnas" not in peers:
        return None

    def mean(method: str, f: Any) -> float:
        return statistics.mean(f(by[method][s]) for s in seeds)

    test = {m: mean(m, lambda r: r["test"]) for m in (*peers, ss)}
    best = max(peers, key=lambda m: test[m])
    size = mean(ss, lambda r: r[kind]) / mean(best, lambda r: r[kind])
    b64 = {m: mean(m, lambda r: r["latency"]["b64"]["ratio"]) for m in (*peers, ss)}  # × dense, same rounds
    fastest = min(peers, key=lambda m: b64[m])
    lat, lat_fast = b64[ss] / b64[best], b64[ss] / b64[fastest]
    t_ss = mean(ss, lambda r: r["seconds"])
    t_fn, t_fn_all = mean("fastnas", lambda r: r["seconds_search"]), mean("fastnas", lambda r: r["seconds"])
    screen = (f"; {mean(ss, lambda r: r['seconds'] - r['seconds_final']) / t_fn:.1f}× without its final training"
              if all("seconds_final" in by[ss][s] for s in seeds) else "")
    return "| " + " | ".join([
        f"{model} / {fraction * 100:g} % {kind}" + ("" if ss == "sparsesearch" else f" ({ss})"), str(len(seeds)),
        f"{(test[ss] - test[best]) * 100:+.1f}", f"{best} ({test[best] * 100:.1f})",
        f"{(test[ss] - test['fastnas']) * 100:+.1f}", f"{size:.2f}×", f"{lat:.2f}×",
        f"{lat_fast:.2f}× ({fastest})",
        f"{t_ss / t_fn:.1f}×; {t_ss / t_fn_all:.1f}×{screen}",
    ]) + " |"


def render_summary(cells: dict[str, dict[str, Any]]) -> str:
    """Per target, sparsesearch against the best peer (by mean test accuracy): the done-when of
    issue 12 (accuracy ≥ each peer's at no more of the target, latency, wall time vs FastNAS).
    Means over the seeds both have."""
    lines = ["| model / target | seeds | sparsesearch − best peer (test pts) | best peer | "
             "sparsesearch − FastNAS | size vs best peer (target unit) | b64 latency vs best peer | "
             "b64 latency vs the fastest peer | "
             "search s / FastNAS s (pruning only; with fine-tuning; search without its final training) |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in cells.values():
        groups.setdefault((r["model"], r["kind"], r["fraction"]), {}).setdefault(r["method"], {})[r["seed"]] = r
    kinds = {"params": 0, "macs": 1}
    for (model, kind, fraction), by in sorted(groups.items(), key=lambda kv: (kv[0][0], kinds[kv[0][1]], -kv[0][2])):
        for ss in [m for m in SEARCHES if m in by]:
            row = _summary_row(model, kind, fraction, by, ss)
            if row:
                lines.append(row)
    return "\n".join(lines)


DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- peers:start -->", "<!-- peers:end -->"


def doc_section(cells: dict[str, dict[str, Any]]) -> str:
    protocol = __doc__.split("Usage::")[0].strip().split("\n", 1)[1].strip()
    seeds = sorted({r["seed"] for r in cells.values()})
    meta = json.loads(RESULTS.read_text())["meta"] if RESULTS.is_file() else {}
    v = meta.get("versions", {})
    return "\n".join([
        START,
        "## Structured: side by side with Torch-Pruning and FastNAS",
        "",
        "Generated by `python benchmarks/peers.py` (`make bench-peers`; the peers are the optional",
        "`bench` extra: `pip install -e \".[bench]\"`); results in `benchmarks/results/peers.json`.",
        f"Torch-Pruning {v.get('torch-pruning')}, ModelOpt {v.get('nvidia-modelopt')}, torch {v.get('torch')}. "
        f"Mean ± std over the seeds measured ({', '.join(map(str, seeds))}; the `seeds` column says how many "
        "each row has). Latency is the compacted model's median over the dense model's median, measured "
        "interleaved, 1 thread, on 2 shared cores (noisy). Wall time in seconds, on those shared cores.",
        "",
        render(cells),
        "",
        "sparsesearch against the best peer at each target (means over the seeds that every method "
        "has; latency: the compacted models' b64 medians, which depend on the machine's load):",
        "",
        render_summary(cells),
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
    else:  # after the equal-compute section (and its hand-written reading), before round 1
        anchor = "\n## Round 1 protocol"
        i = text.find(anchor)
        text = (text[:i] + "\n" + section + "\n" + text[i:]) if i >= 0 else (text.rstrip("\n") + "\n\n" + section + "\n")
    DOC.write_text(text)


def joint_latency(path: Path, cells: dict[str, dict[str, Any]], epochs: int, *, rounds: int = 5,
                  only: list[str] | None = None) -> None:
    """Re-measure the latency of every stored model of a (model, target, seed), all methods and
    the dense model interleaved in the same rounds, so the methods are compared under the same
    machine load (the models are the ones each cell saved under RUNS)."""
    torch.set_num_threads(1)
    stale: list[str] = []  # model files that are not the cell's model: not timed, listed
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in cells.values():
        groups.setdefault((r["model"], r["kind"], r["fraction"], r["seed"]), []).append(r)
    for (model, kind, fraction, seed), rs in sorted(groups.items()):
        if not selected(only, model, kind, fraction):
            continue
        dense, splits = dense_model(model, seed)
        nets = {"dense": dense}
        for r in rs:
            net = stored_model(r, splits)
            if net is not None:
                nets[r["method"]] = net
            elif _model_file(r).is_file():  # another run's model
                stale.append(_key(r))
        if len(nets) < 2:
            continue
        for b in (1, 64):
            lat = interleaved_latency(nets, example(splits, b) + 0.1, rounds=rounds, min_run_time=0.1)
            for r in rs:
                if r["method"] in nets:
                    r["latency"][f"b{b}"] = {"dense": lat["dense"][0], "pruned": lat[r["method"]][0],
                                             "ratio": lat[r["method"]][0] / lat["dense"][0], "joint": True}
        print(f"{model}:{kind}{fraction}:{seed}: " + ", ".join(
            f"{r['method']} b1 ×{r['latency']['b1']['ratio']:.2f} b64 ×{r['latency']['b64']['ratio']:.2f}"
            for r in rs if r["method"] in nets), flush=True)
    save(path, cells, epochs)
    if stale:
        print(f"{len(stale)} model file(s) do not hold their cell's model (rerun the cells with "
              f"--redo; their latency was left as it was):\n  " + "\n  ".join(stale), flush=True)


def _dense_only(cell: tuple[str, int]) -> None:
    torch.set_num_threads(1)
    dense_model(*cell)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 epochs per lr, resnet8 at 15 %% MACs; "
                    "results in peers-quick.json, docs untouched")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--only", nargs="*", default=None,
                    help="model or model:target cells, e.g. bn-cnn:params0.1 resnet8:macs0.15")
    ap.add_argument("--render", action="store_true", help="only print the table of stored results")
    ap.add_argument("--doc", action="store_true", help="only rewrite the docs/benchmarks.md section")
    ap.add_argument("--redo", action="store_true", help="recompute cells already stored")
    ap.add_argument("--latency-rounds", type=int, default=5,
                    help="interleaved rounds of the --latency pass (default 5)")
    ap.add_argument("--latency", action="store_true",
                    help="only re-measure latency: every stored model of a cell, interleaved together")
    ap.add_argument("--results", type=Path, default=None,
                    help="results file (default benchmarks/results/peers.json; the dense cache "
                         "and the models go to runs/peers beside it)")
    args = ap.parse_args(argv)
    global RUNS, MODEL_PREFIX
    MODEL_PREFIX = "quick-" if args.quick else ""
    path = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    RUNS = path.resolve().parent / "runs" / "peers"
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(SEEDS))
    only = args.only if args.only is not None else (["resnet8:macs0.15"] if args.quick else None)
    cells = load(path)
    if args.render:
        print(render(cells))
        print()
        print(render_summary(cells))
        return 0
    if args.doc:
        write_doc(cells)
        return 0
    if args.latency:
        joint_latency(path, cells, epochs, rounds=args.latency_rounds, only=only)
        return 0
    todo = []
    # seed-major, so that a stopped run has whole seeds
    for method in args.methods:
        for seed in seeds:
            for model in MODELS:
                for kind, f in TARGETS:
                    if not selected(only, model, kind, f):
                        continue
                    key = f"{model}:{kind}{f}:{seed}:{method}"
                    old = cells.get(key)
                    stale = (old is not None and method not in SEARCHES
                             and [x["lr"] for x in old.get("runs", [])] != list(LRS[model]))
                    if args.redo or old is None or stale:  # a peer run on another lr grid: again
                        todo.append((model, kind, f, seed, method))
    todo.sort(key=lambda c: (c[3], c[4] in SEARCHES))  # seed by seed, the search last
    print(f"{len(todo)} cells to run", flush=True)
    for cell in sorted({(m, s) for m, _, _, s, _ in todo}):
        _dense_only(cell)
    with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_cell, *c, epochs): c for c in todo}
        for fut in cf.as_completed(futures):
            try:
                r = fut.result()
            except Exception as exc:  # one failed cell does not stop the grid
                print(f"{futures[fut]}: FAILED {type(exc).__name__}: {exc}", flush=True)
                continue
            cells[_key(r)] = r
            save(path, {_key(r): r}, epochs)
            print(f"{_key(r)}: test {r['test']:.4f} params {r['params']} macs {r['macs']} "
                  f"used {r['budget_used']:.3f} b64 ×{r['latency']['b64']['ratio']:.2f} "
                  f"{r['seconds_search']:.0f}+{r['seconds_finetune']:.0f} s", flush=True)
    print(render(cells))
    if not args.quick:
        write_doc(cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
