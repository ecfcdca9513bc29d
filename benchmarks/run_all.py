"""``make bench``: the whole benchmark, written to ``docs/benchmarks.md`` and its plot.

1. The grid (``common.py`` explains the protocol): every model × kept fraction × seed × method.
2. Cost figures: engine overhead vs a bare PyTorch loop (``overhead.py``), the effect of the
   median pruner (``early_stopping.py``), a profile of trials (``profile_trial.py``).
3. ``docs/benchmarks.md``: generated from the results above plus every
   ``benchmarks/results/*.md`` that other benchmark scripts write (included verbatim, in name
   order, each under its own heading) and ``docs/img/benchmarks_accuracy.png``.

Raw results go to ``benchmarks/results/main/*.json`` (``--quick``: ``benchmarks/.quick/``,
written to ``benchmarks/.quick/benchmarks.md`` instead of docs/).

    .venv/bin/python benchmarks/run_all.py            # full run (~35 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # a few minutes: smaller everything
    .venv/bin/python benchmarks/run_all.py --render   # rewrite the docs from saved results
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime as dt
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402

ROOT = C.ROOT
MAIN_DIR = HERE / "results" / "main"
QUICK_DIR = HERE / ".quick"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "benchmarks_accuracy.png"


def _config_key(cfg: C.Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# -- the grid -------------------------------------------------------------------------------


def _task(model: str, data: str, seed: int, cfg: C.Config) -> dict[str, Any]:
    """One (model, data, seed): dense training, then every kept fraction. Runs in a worker."""
    from sparsesearch import find_layers
    from sparsesearch.budget import plan_budget
    from sparsesearch.errors import BudgetError

    C.set_threads(cfg.threads)
    t0 = time.perf_counter()
    load0 = C.load_average()
    dense = C.train_dense_model(model, data, seed, cfg)
    C.log(f"{model} seed {seed}: dense val {dense.val:.4f} test {dense.test:.4f} ({dense.seconds:.0f}s)")
    records: list[dict[str, Any]] = []
    for fraction in cfg.fractions:
        try:
            plan_budget(dense.model, find_layers(dense.model), fraction)
        except BudgetError as exc:
            total = C.count_params(dense.model).total
            C.log(f"{model} {fraction:.0%}: infeasible: {exc}")
            records.append({"model": model, "data": data, "seed": seed, "fraction": fraction,
                            "method": "infeasible", "reason": str(exc), "total": total,
                            "budget": int(math.floor(fraction * total))})
            continue
        records += C.run_cell(dense, fraction, cfg)
    return {"model": model, "data": data, "seed": seed, "records": records,
            "seconds": time.perf_counter() - t0, "load_start": load0, "load_end": C.load_average(),
            "pid": os.getpid()}


def _cost_task(name: str, cfg: C.Config, quick: bool) -> tuple[str, Any]:
    """One cost figure (engine overhead, early stopping, profile). Runs in a worker; a failure
    is recorded (and reported in the docs) instead of ending the whole benchmark."""
    import traceback

    try:
        return _cost_task_unsafe(name, cfg, quick)
    except Exception:  # noqa: BLE001
        C.log(f"cost: {name} FAILED")
        return name, {"error": traceback.format_exc()[-3000:]}


def _cost_task_unsafe(name: str, cfg: C.Config, quick: bool) -> tuple[str, Any]:
    import early_stopping
    import overhead
    import profile_trial

    C.set_threads(cfg.threads)
    C.log(f"cost: {name}")
    if name == "overhead-lenet300":
        return name, overhead.measure("lenet300", "mnist-5k", cfg, n_trials=6 if quick else 12,
                                      rounds=1 if quick else 3, storages=("sqlite", "sqlite-wal", "journal", "memory"))
    if name == "overhead-lenet5":
        return name, overhead.measure("lenet5", "mnist-5k", cfg, n_trials=6, rounds=2, storages=("sqlite", "journal"))
    if name == "early":
        return name, early_stopping.measure("lenet300", "mnist-5k", 0.02, cfg, seeds=(0,) if quick else (0, 1, 2),
                                            n_trials=12 if quick else 24)
    if name == "profile-lenet5":
        return name, profile_trial.profile("lenet5", "mnist-5k", 0.01, cfg, n_trials=5, heuristics=("lamp",))
    if name == "profile-lenet300":
        return name, profile_trial.profile("lenet300", "mnist-5k", 0.01, cfg, n_trials=8 if quick else 16)
    raise ValueError(name)


def cost_names(quick: bool) -> list[str]:
    if quick:
        return ["overhead-lenet300", "early", "profile-lenet300"]
    return ["overhead-lenet300", "early", "profile-lenet5", "profile-lenet300", "overhead-lenet5"]


def run_all_tasks(cfg: C.Config, grid_path: Path, cost_path: Path, *, jobs: int, resume: bool,
                  cost: bool, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid tasks, longest first, then the cost figures, on ``jobs`` worker processes;
    results are saved as each task finishes (``--resume`` skips saved ones)."""
    key = _config_key(cfg)
    done: dict[str, Any] = {}
    costs: dict[str, Any] = {}
    saved_grid_seconds = None
    if resume and grid_path.is_file():
        saved = json.loads(grid_path.read_text())
        if saved.get("config_key") == key:
            done = {f"{t['model']}/{t['seed']}": t for t in saved["tasks"]}
            saved_grid_seconds = saved.get("grid_seconds")
    if (resume or not cost) and cost_path.is_file():
        saved = json.loads(cost_path.read_text())
        if saved.get("config_key") == key:
            costs = saved.get("tasks", {})
    if done or costs:
        C.log(f"resuming: {len(done)} grid task(s) and {len(costs)} cost task(s) already done")
    order = {"lenet5": 3, "lenet300": 2}
    grid_todo = sorted(((m, d, s) for m, d in cfg.models for s in cfg.seeds if f"{m}/{s}" not in done),
                       key=lambda t: -order.get(t[0], 1))
    cost_todo = [n for n in cost_names(quick) if n not in costs] if cost else []
    grid = {"config": cfg.to_dict(), "config_key": key, "tasks": list(done.values())}
    grid["last_run"] = [f"{m}/{s_}" for m, _, s_ in grid_todo] + cost_todo
    if not grid_todo and saved_grid_seconds is not None:  # the grid is the earlier run's: keep its time
        grid["grid_seconds"] = saved_grid_seconds
    cost_state = {"config_key": key, "tasks": costs}
    t0 = time.perf_counter()

    def save() -> None:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid_path.write_text(json.dumps(grid, indent=1, default=float) + "\n")
        cost_path.write_text(json.dumps(cost_state, indent=1, default=float) + "\n")

    def collect(kind: str, result: Any) -> None:
        if kind == "grid":
            grid["tasks"].append(result)
        else:
            name, value = result
            cost_state["tasks"][name] = value
        save()

    if jobs <= 1:
        for m, d, s in grid_todo:
            collect("grid", _task(m, d, s, cfg))
        if grid_todo:
            grid["grid_seconds"] = time.perf_counter() - t0
        for n in cost_todo:
            collect("cost", _cost_task(n, cfg, quick))
    else:
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_task, m, d, s, cfg): "grid" for m, d, s in grid_todo}
            futures.update({pool.submit(_cost_task, n, cfg, quick): "cost" for n in cost_todo})
            pending_grid = len(grid_todo)
            for fut in cf.as_completed(futures):
                collect(futures[fut], fut.result())
                if futures[fut] == "grid":
                    pending_grid -= 1
                    if pending_grid == 0:
                        grid["grid_seconds"] = time.perf_counter() - t0
    grid.setdefault("grid_seconds", time.perf_counter() - t0)
    save()
    return grid, cost_state


# -- rendering --------------------------------------------------------------------------------


def _records(grid: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for t in grid["tasks"] for r in t["records"]]


def plot(records: list[dict[str, Any]], cfg: C.Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(cfg.models)
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 4.4), squeeze=False)
    styles = {"global": ("tab:red", "v"), "uniform": ("tab:gray", "s"), "lamp": ("tab:blue", "o"),
              "erk": ("tab:green", "^"), "search": ("black", "*")}
    handles: dict[str, Any] = {}
    for ax, (model, data) in zip(axes[0], models):
        rows = C.select(records, model=model, data=data)
        dense = C.select(rows, method="dense")
        series: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for i, method in enumerate(("global", "uniform", "lamp", "erk", "search")):
            xs, ys, es = [], [], []
            for f in sorted(cfg.fractions):
                rs = C.select(rows, method=method, fraction=f)
                if rs:
                    m, s = C.mean_std([r["test"] for r in rs])
                    xs.append(f * (1 + 0.035 * (i - 2)))  # a small dodge so error bars do not overlap
                    ys.append(100 * m)
                    es.append(100 * s)
            if xs:
                series[method] = (xs, ys, es)
        # the y range follows the better methods; points below it are drawn on the axis, labelled
        core = [y for m_, (_, ys, _) in series.items() if m_ in ("lamp", "erk", "search", "global") for y in ys]
        top = 100 * C.mean_std([r["test"] for r in dense])[0] if dense else max(core or [100])
        low = max(0.0, min(core or [0]) - 4)
        ax.set_ylim(low, min(100.0, top + 1.5))
        if dense:
            m, s = C.mean_std([r["test"] for r in dense])
            handles["dense"] = ax.axhline(100 * m, color="tab:purple", lw=1, ls="--", label="dense")
            ax.axhspan(100 * (m - s), 100 * (m + s), color="tab:purple", alpha=0.1)
        for method, (xs, ys, es) in series.items():
            color, marker = styles[method]
            inside = [(x, y, e) for x, y, e in zip(xs, ys, es) if y >= low]
            if inside:
                h = ax.errorbar([p[0] for p in inside], [p[1] for p in inside], yerr=[p[2] for p in inside],
                                color=color, marker=marker, capsize=3, lw=1.2,
                                ms=9 if method == "search" else 5, label=C.LABELS[method])
                handles[method] = h
            for x, y, _ in zip(xs, ys, es):
                if y < low:
                    h = ax.plot([x], [low], marker=marker, color=color, ms=6, clip_on=False,
                                label=C.LABELS[method])[0]
                    handles.setdefault(method, h)
                    ax.annotate(f"{y:.0f}", (x, low), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=7, color=color)
        infeasible = sorted({r["fraction"] for r in C.select(rows, method="infeasible")})
        title = f"{model} on {data}"
        if infeasible:
            title += f" (budget infeasible at {', '.join(f'{f:.0%}' for f in infeasible)})"
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_xlim(min(cfg.fractions) * 0.8, max(cfg.fractions) * 1.25)
        ax.set_xticks(sorted(cfg.fractions))
        ax.set_xticklabels([f"{f:.0%}" for f in sorted(cfg.fractions)])
        ax.minorticks_off()
        ax.set_xlabel("parameters kept (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    order = [m for m in ("dense", "global", "uniform", "lamp", "erk", "search") if m in handles]
    fig.legend([handles[m] for m in order], [C.LABELS[m] for m in order], loc="lower center",
               ncol=len(order), fontsize=9, frameon=False)
    fig.suptitle(f"Test accuracy vs kept fraction (mean ± std over {len(cfg.seeds)} seeds; "
                 f"{cfg.ft_epochs} fine-tune epochs, lr tuned on validation; search {cfg.n_trials} trials)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _best_marks(cells: dict[str, tuple[float, float]]) -> set[str]:
    pruned = {m: v for m, v in cells.items() if m != "dense" and not math.isnan(v[0])}
    if not pruned:
        return set()
    best = max(v[0] for v in pruned.values())
    return {m for m, v in pruned.items() if v[0] == best}


def accuracy_table(records: list[dict[str, Any]], cfg: C.Config, field: str) -> str:
    methods = [m for m in C.METHODS]
    head = "| model | kept | budget (params) | " + " | ".join(C.LABELS[m] for m in methods) + " |"
    lines = [head, "|" + "---|" * 3 + "---:|" * len(methods)]
    for model, data in cfg.models:
        for f in cfg.fractions:
            rows = C.select(records, model=model, data=data, fraction=f)
            if not rows:
                continue
            inf = C.select(rows, method="infeasible")
            if inf:
                dense = list({r["seed"]: r for r in records
                              if r["model"] == model and r["method"] == "dense"}.values())
                d = C.pct([r[field] for r in dense]) if dense else "n/a"
                lines.append(f"| {model} / {data} | {f:.0%} | {inf[0]['budget']:,} | {d} | "
                             + " | ".join(["infeasible"] * (len(methods) - 1)) + " |")
                continue
            cells = {m: C.mean_std([r[field] for r in C.select(rows, method=m)]) for m in methods}
            best = _best_marks(cells)
            vals = []
            for m in methods:
                txt = C.pct([r[field] for r in C.select(rows, method=m)])
                vals.append(f"**{txt}**" if m in best else txt)
            lines.append(f"| {model} / {data} | {f:.0%} | {rows[0]['budget']:,} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def time_table(records: list[dict[str, Any]], cfg: C.Config) -> str:
    methods = list(C.METHODS)
    lines = ["| model | kept | " + " | ".join(C.LABELS[m] for m in methods) + " |",
             "|---|---|" + "---:|" * len(methods)]
    for model, data in cfg.models:
        for f in cfg.fractions:
            rows = C.select(records, model=model, data=data, fraction=f)
            if not rows or C.select(rows, method="infeasible"):
                continue
            vals = []
            for m in methods:
                ss = [r["seconds"] for r in C.select(rows, method=m)]
                vals.append("n/a" if not ss else f"{C.mean_std(ss)[0]:.1f}")
            lines.append(f"| {model} | {f:.0%} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def search_table(records: list[dict[str, Any]], cfg: C.Config) -> str:
    lines = ["| model | kept | best heuristic on val (mean) | search val − best heuristic val (pp, per seed) "
             "| search test − LAMP test (pp, per seed) | best trial was a seed | trials pruned | chosen lr (search) |",
             "|---|---|---|---|---|---:|---:|---|"]
    for model, data in cfg.models:
        for f in cfg.fractions:
            rows = C.select(records, model=model, data=data, fraction=f, method="search")
            if not rows:
                continue
            rows = sorted(rows, key=lambda r: r["seed"])
            lamp = {r["seed"]: r for r in C.select(records, model=model, data=data, fraction=f, method="lamp")}
            heur = {}
            for r in records:
                if (r["model"], r["data"], r["fraction"]) == (model, data, f) and r["method"] in (
                        "uniform", "lamp", "erk", "global-ss"):
                    if r["seed"] not in heur or r["val"] > heur[r["seed"]][1]:
                        heur[r["seed"]] = (r["method"], r["val"])
            dv = ", ".join(f"{100 * (r['val'] - r['best_seed_val']):+.1f}" for r in rows)
            dt_ = ", ".join(f"{100 * (r['test'] - lamp[r['seed']]['test']):+.1f}" if r["seed"] in lamp else "n/a"
                            for r in rows)
            names = ", ".join(heur[r["seed"]][0] if r["seed"] in heur else "?" for r in rows)
            seeds_won = sum(bool(r["best_is_seed"]) for r in rows)
            pruned = ", ".join(str(r["pruned"]) for r in rows)
            lrs = ", ".join(f"{r['lr']:.3g}" if r.get("lr") else "?" for r in rows)
            bsv = C.mean_std([r["best_seed_val"] for r in rows])[0]
            lines.append(f"| {model} | {f:.0%} | {100 * bsv:.2f} ({names}) | {dv} | {dt_} | "
                         f"{seeds_won}/{len(rows)} | {pruned} | {lrs} |")
    return "\n".join(lines)


def replay_check(records: list[dict[str, Any]]) -> str:
    rs = [r for r in records if "replay_val" in r]
    bad = [r for r in rs if abs(r["replay_val"] - r["val"]) > 1e-9]
    if not bad:
        return (f"All {len(rs)} heuristic results replayed from their stored recipes gave exactly the "
                f"validation accuracy their search trial recorded.")
    return (f"{len(bad)} of {len(rs)} replays differed from the trial's validation accuracy (max "
            f"{max(abs(r['replay_val'] - r['val']) for r in bad):.4f}).")


def overhead_section(res: list[dict[str, Any]]) -> str:
    if not res:
        return "_not measured in this run_"
    lines = ["| model | kept | trials × epochs | storage | sparsesearch s/trial | bare loop s/trial | ratio per trial "
             "(wall) | ratio per trial (CPU) | ratio end to end (wall, setup included) | per round: wall / CPU ratio (load) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for o in res:
        names = {"sqlite": "SQLite file (default)", "sqlite-wal": "SQLite, WAL + synchronous=NORMAL",
                 "journal": "journal file (`journal:PATH`)", "memory": "in memory"}
        storages = [s for s in names if any(r["storage"] == s for r in o["rounds"])]
        for st in storages:
            rr = [r for r in o["rounds"] if r["storage"] == st]
            cpu = o.get(st + "_ratio_cpu_trial")
            lines.append(
                f"| {o['model']} | {o['fraction']:.0%} | {o['n_trials']} × {o['epochs']} | "
                f"{names[st]} | {o[st + '_search_trial']:.3f} | "
                f"{o[st + '_bare_trial']:.3f} | **{o[st + '_ratio_trial']:.2f}** | "
                f"{'n/a' if cpu is None else f'{cpu:.2f}'} | {o[st + '_ratio_end_to_end']:.2f} | "
                + ", ".join(f"{r['ratio_trial']:.2f} / {r.get('ratio_cpu_trial', float('nan')):.2f} "
                            f"({r['load'].split()[0]})" for r in rr) + " |")
    return "\n".join(lines)


def early_section(res: dict[str, Any] | None) -> str:
    if not res:
        return "_not measured in this run_"
    lines = ["| seed | setting | pruner | target (best heuristic val) | time to target | trial | whole run (s) "
             "| epochs run | trials pruned | best val | best's test |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(res["runs"], key=lambda r: (r["mode"] != "scratch", r["seed"], r["pruner"])):
        tt = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s"
        what = "from scratch: reach (≥)" if r["mode"] == "scratch" else "seeded: beat (>)"
        test = "" if r["test"] is None else f"{100 * r['test']:.1f}"
        number = "" if r["trial_reaching"] is None else r["trial_reaching"]
        lines.append(f"| {r['seed']} | {what} | {r['pruner']} | {100 * r['target']:.1f} | {tt} | "
                     f"{number} | {r['span']:.1f} | {r['epochs_run']} | {r['pruned']} | "
                     f"{100 * r['best_val']:.1f} | {test} |")
    summary = []
    for mode in ("scratch", "seeded"):
        for pruner in ("median", "none"):
            rs = [r for r in res["runs"] if r["mode"] == mode and r["pruner"] == pruner]
            if not rs:
                continue
            reached = [r["time_to_target"] for r in rs if r["time_to_target"] is not None]
            summary.append(
                f"{mode}/{pruner}: target reached in {len(reached)}/{len(rs)} runs"
                + (f", median time {sorted(reached)[len(reached) // 2]:.1f} s" if reached else "")
                + f"; mean run {sum(r['span'] for r in rs) / len(rs):.1f} s, "
                f"{sum(r['epochs_run'] for r in rs) / len(rs):.0f} epochs, "
                f"{sum(r['pruned'] for r in rs) / len(rs):.1f} trials pruned")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in summary)


def overhead_verdict(res: list[dict[str, Any]]) -> str:
    out = []
    for o in res:
        r = o.get("sqlite_ratio_trial")
        if r is None:
            continue
        verdict = "meets" if r <= 1.05 else "misses"
        cpu = o.get("sqlite_ratio_cpu_trial")
        out.append(f"{o['model']} ({o['n_trials']} trials × {o['epochs']} epochs, default SQLite storage): "
                   f"{r:.2f} per trial in wall time ({'n/a' if cpu is None else f'{cpu:.2f}'} in CPU time) — "
                   f"{verdict} the 1.05 target"
                   + (f"; {o['sqlite-wal_ratio_trial']:.2f} with SQLite in WAL mode" if "sqlite-wal_ratio_trial" in o else "")
                   + (f"; {o['journal_ratio_trial']:.2f} with a journal file" if "journal_ratio_trial" in o else "")
                   + (f"; {o['memory_ratio_trial']:.2f} with in-memory storage" if "memory_ratio_trial" in o else "")
                   + f"; {o['sqlite_ratio_end_to_end']:.2f} end to end.")
    return "\n".join(f"- {x}" for x in out)


def findings() -> str:
    path = HERE / "findings.md"
    if not path.is_file():
        return ""
    return ("<!-- included from benchmarks/findings.md: hand-written analysis of the profile -->\n\n"
            + path.read_text().strip())


def other_sections(exclude: Path | None = None) -> str:
    parts = []
    for p in sorted((HERE / "results").glob("*.md")):
        if exclude is not None and p.resolve() == exclude.resolve():
            continue
        text = p.read_text().strip()
        parts.append(f"<!-- included verbatim from benchmarks/results/{p.name} (written by its own script) -->\n\n"
                     + text)
    if not parts:
        return ("_No other benchmark has written `benchmarks/results/*.md` yet (the compaction latency and "
                "worker scaling benchmarks will appear here)._")
    return "\n\n".join(parts)


def resumes(meta: dict[str, Any]) -> str:
    out = ""
    for r in meta.get("resumes", []):
        what = ", ".join(r.get("tasks", [])) or "the tasks missing from the saved results"
        out += (f"\n- Resumed {r['started']} → {r['finished']} ({r['minutes']:.0f} min, load {r['load_start']} → "
                f"{r['load_end']}, `run_all.py --resume`): re-ran {what}; everything else is from the run above."
                + (f" {r['note']}" if r.get("note") else ""))
    return out


def render(meta: dict[str, Any], grid: dict[str, Any], cost: dict[str, Any], cfg: C.Config, doc: Path,
           plot_path: Path) -> str:
    import search_vs_heuristics as SVH
    from profile_trial import render as render_profile

    records = _records(grid)
    plot(records, cfg, plot_path)
    rel_plot = os.path.relpath(plot_path, doc.parent)
    m = meta["machine"]
    val_size = {"mnist-5k": 1000, "digits": 359}
    tasks = grid["tasks"]
    loads = ", ".join(f"{t['model']}/{t['seed']}: {t['load_start']} → {t['load_end']}" for t in
                      sorted(tasks, key=lambda t: (t["model"], t["seed"])))
    n_seed_trials = 4 * len(cfg.lrs)
    out = f"""# Benchmarks

<!-- Generated by benchmarks/run_all.py (`make bench`); edits here are overwritten. Sections
     from other benchmark scripts are included verbatim from benchmarks/results/*.md. -->

Does searching per-layer sparsity and the retraining learning rate together beat what users do
today, at the same parameter budget? This page is regenerated by one command:

```
{meta['command']}
```

- Run: {meta['started']} → {meta['finished']} ({meta['minutes']:.0f} min wall; grid {grid.get('grid_seconds', 0) / 60:.0f} min with {meta['jobs']} worker process(es)).
- Machine: {m['cpu']}, {m['cores']} cores; {cfg.threads} torch thread per worker process; torch {m['torch']}, Optuna {m['optuna']}, Python {m['python']}; {m['platform']}.
- Code: sparsesearch {m['sparsesearch']} at git {meta['git']}.{resumes(meta)}
- Load average (1, 5, 15 min) at start {meta['load_start']}, at end {meta['load_end']}. Other jobs shared
  these {m['cores']} cores during the run, so absolute times are inflated and noisy; compare times within a
  row (same worker process, run back to back) and trust the ratios more than the seconds.

## Protocol

- **Models and data**: {', '.join(f'`{a}` on `{b}`' for a, b in cfg.models)}. Splits are seeded and
  stratified: MNIST-5k 3,000 / 1,000 / 1,000 (train / val / test), digits 1,079 / 359 / 359.
- **Budget**: kept fraction {', '.join(f'{f:.0%}' for f in cfg.fractions)} of *all* parameters (biases
  included, `count_params`), the same integer budget for every method. Biases are not pruned, so a
  budget below the biases plus one weight per layer is infeasible (digits-mlp at 1 %: its 106 biases
  exceed 65 parameters); those cells are marked infeasible rather than bent.
- **Dense start**: per (model, seed) one dense model (`train_dense`, SGD momentum 0.9, cosine,
  weight decay {cfg.dense_weight_decay}, batch {cfg.batch_size}; {', '.join(f'{n} {e} epochs at lr {lr}' for n, e, lr in cfg.dense if n in dict(cfg.models))}); every method starts from a copy of the same weights.
- **Fine-tuning** (all methods): {cfg.ft_epochs} epochs, SGD momentum 0.9, cosine schedule, batch
  {cfg.batch_size}, no weight decay, no distillation, validation after every epoch — the same
  `sparsesearch.train.fit` loop for every method.
- **Learning rate**: tuned on validation for every method. Baselines: best of {', '.join(map(str, cfg.lrs))}.
  The search: log-uniform in [{cfg.lr_range[0]}, {cfg.lr_range[1]}].
- **Methods**:
  - *dense*: not pruned.
  - *global magnitude (torch)*: `torch.nn.utils.prune.global_unstructured` (L1) over every Linear/Conv
    weight, removing exactly as many weights as the budget needs; fine-tuned with torch's prune hooks
    holding the masks. This is what users already have. No per-layer floor: it may empty a layer.
  - *uniform*, *LAMP* (Lee et al. 2021), *ERK* (Evci et al. 2020): sparsesearch's allocations
    (`BudgetPlan.uniform/lamp/erk`, magnitude scores of the dense weights, one-shot, each layer keeps
    at least 0.1 %). These are exactly the heuristic seed trials `search()` enqueues first
    (`heuristic_lrs` = the grid above), so they are read from the search's study rather than trained
    twice: per heuristic the best lr on validation, whose stored recipe is then replayed with
    `apply_recipe` to measure test accuracy. {replay_check(records)} Their time is the sum of their
    {len(cfg.lrs)} trials' durations.
  - *sparsesearch*: `search(dense, splits, budget, n_trials={cfg.n_trials}, pruner="median")`: the
    {n_seed_trials} heuristic seeds (uniform, global, LAMP, ERK × {len(cfg.lrs)} learning rates), then
    {cfg.n_trials - n_seed_trials} TPE trials over per-layer densities (projected onto the budget) and the
    learning rate; its time is the whole `search()` call, seeds included. N = {cfg.n_trials} is what fits the
    time box, not a tuned choice; the search's own `global` seed (sparsesearch's global threshold) is in
    the raw results as `global-ss`.
- **Selection** on validation only; **test** accuracy is reported; {len(cfg.seeds)} seeds
  ({', '.join(map(str, cfg.seeds))}: the seed sets the data split, the dense initialisation and training,
  and the search's sampler), mean ± sample std.
- **Sizing**: the grid has to finish in about 35 minutes on 2 shared CPU cores, which is why
  fine-tuning is {cfg.ft_epochs} epochs and the search gets {cfg.n_trials} trials; with more epochs every method
  gains, and the gaps at 1–2 % would likely shrink.
- **Noise**: a validation split of {val_size['mnist-5k']:,} has a binomial standard error of about
  {100 * math.sqrt(0.9 * 0.1 / 1000):.1f} pp at 90 % accuracy ({100 * math.sqrt(0.97 * 0.03 / 1000):.1f} pp at 97 %); digits'
  {val_size['digits']} about {100 * math.sqrt(0.9 * 0.1 / 359):.1f} pp at 90 %. The search picks the best of {cfg.n_trials}
  validation scores, a baseline the best of {len(cfg.lrs)}, so the search's *validation* numbers are
  optimistic (winner's curse); its test numbers are not.

## Headline: LeNet-5 on MNIST-5k at 1 % kept

Output of `benchmarks/search_vs_heuristics.py` (issue 3), computed from the lenet5 / 1 % cells
of the grid below (the script runs the same cells on its own):

```
{SVH.render(records, cfg)}
```

## Test accuracy (%), mean ± std over {len(cfg.seeds)} seeds

Best pruned method of each row in bold (on means; differences within a std are not significant).

{accuracy_table(records, cfg, 'test')}

![Test accuracy vs kept fraction]({rel_plot})

## Validation accuracy (%) — what the selection saw

{accuracy_table(records, cfg, 'val')}

## Wall time per method (s, mean over seeds)

Dense: training once (shared by every method of that seed). Global: {len(cfg.lrs)} fine-tunes. Uniform /
LAMP / ERK: their {len(cfg.lrs)} trials inside the search. Search: the whole call, including those seed trials.

{time_table(records, cfg)}

## The search against its own seeds

How much the search's best validation score exceeds the best heuristic seed (that is its
starting point, so it is never negative), whether that transfers to test, and how often the
best trial was a seed. Load averages per worker task (start → end): {loads}.

{search_table(records, cfg)}

## Cost figures

### Engine overhead

Time per trial of `search()` against a bare PyTorch loop doing the same work by hand (copy the
dense model, `torch.nn.utils.prune.l1_unstructured` per layer at the trial's allocation, the same
fine-tuning epochs, batch size, learning rate and per-epoch validation on the same tensors),
replaying the search's own allocations, interleaved in one process (`benchmarks/overhead.py`).
The search runs with a fixed learning rate (0.05) and no pruner, so its trials are the 4
heuristic seeds and then TPE allocations, all fully trained. "Per trial (wall)" uses Optuna's
trial durations; "per trial (CPU)" is process CPU time from one trial's end to the next (the
trial plus Optuna's ask/tell; it is steadier under a fluctuating load but does not see time
spent waiting on disk); "end to end" divides the whole `search()` call (storage creation,
scoring, seeding, best-model test) by the bare loop's total. Rounds alternate which side runs
first; medians are shown. Target: ≤ 1.05.

{overhead_section(cost.get('overhead', []))}

{overhead_verdict(cost.get('overhead', []))}

### Early stopping (median pruner vs none)

`benchmarks/early_stopping.py`: the same seeded search with `pruner="median"` and with
`pruner="none"`. Target = the best heuristic seed's validation accuracy (uniform / global / LAMP /
ERK at the lr grid). *From scratch* (`heuristics=()`): time until a trial first reaches it.
*Seeded* (the default): the seeds come first in both runs, so the time until a trial beats it.
Times are measured from the first trial's start; "epochs run" counts fine-tuning epochs actually
trained (load-independent).

{early_section(cost.get('early'))}

### Where a trial's time goes

`benchmarks/profile_trial.py`: `cProfile` over the `study.optimize` part of a search (imports
warmed up first). Rows are cumulative times of named functions; indented rows are inside the row
above. The storage row is self time of SQLAlchemy, `optuna.storages` and `sqlite3` over the whole
call (setup included).

{chr(10).join(render_profile(p) + chr(10) for p in cost.get('profile', []))}
{findings()}

## Other benchmarks

{other_sections()}
"""
    return out


# -- main -----------------------------------------------------------------------------------


def _cost_view(state: dict[str, Any]) -> dict[str, Any]:
    t = {k: v for k, v in state.get("tasks", {}).items() if "error" not in v}
    return {
        "overhead": [t[n] for n in ("overhead-lenet300", "overhead-lenet5") if n in t],
        "early": t.get("early"),
        "profile": [t[n] for n in ("profile-lenet5", "profile-lenet300") if n in t],
    }



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run the sparsesearch benchmarks and write docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="small sizes, output under benchmarks/.quick/")
    p.add_argument("--render", action="store_true", help="only rewrite the docs from saved results")
    p.add_argument("--resume", action="store_true", help="keep grid tasks already saved with this config")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes for the grid (default: 2 or the number of cores)")
    p.add_argument("--no-cost", action="store_true", help="skip the cost figures (keep saved ones)")
    p.add_argument("--out", type=Path, default=None, help="markdown output (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    cfg = C.QUICK if args.quick else C.Config()
    base = QUICK_DIR if args.quick else MAIN_DIR
    doc = args.out or (QUICK_DIR / "benchmarks.md" if args.quick else DOC)
    plot_path = (QUICK_DIR / "img" / "benchmarks_accuracy.png") if args.quick and args.out is None else (
        doc.parent / "img" / "benchmarks_accuracy.png")
    grid_path, cost_path, meta_path = base / "grid.json", base / "cost.json", base / "meta.json"
    if args.render:
        meta = json.loads(meta_path.read_text())
        grid = json.loads(grid_path.read_text())
        cost = _cost_view(json.loads(cost_path.read_text())) if cost_path.is_file() else {}
    else:
        C.set_threads(cfg.threads)
        started = dt.datetime.now()
        meta = {
            "command": "make bench   # = .venv/bin/python benchmarks/run_all.py" if not args.quick
            else ".venv/bin/python benchmarks/run_all.py --quick",
            "argv": sys.argv[1:], "started": started.strftime("%Y-%m-%d %H:%M"), "load_start": C.load_average(),
            "machine": C.machine(), "git": C.git_revision(), "jobs": args.jobs, "config": cfg.to_dict(),
        }
        if args.jobs != min(2, os.cpu_count() or 1) or args.resume:
            meta["command"] = ".venv/bin/python benchmarks/run_all.py " + " ".join(sys.argv[1:])
        C.log(f"grid: {len(cfg.models)} models × {len(cfg.fractions)} fractions × {len(cfg.seeds)} seeds, "
              f"{args.jobs} job(s); load {meta['load_start']}")
        grid, cost_state = run_all_tasks(cfg, grid_path, cost_path, jobs=args.jobs, resume=args.resume,
                                         cost=not args.no_cost, quick=args.quick)
        cost = _cost_view(cost_state)
        finished = dt.datetime.now()
        this = {"started": meta["started"], "finished": finished.strftime("%Y-%m-%d %H:%M"),
                "load_start": meta["load_start"], "load_end": C.load_average(),
                "minutes": (finished - started).total_seconds() / 60, "git": meta["git"]}
        this["tasks"] = grid.get("last_run", [])
        if args.resume and meta_path.is_file():  # keep the original run's record, note this one
            meta = json.loads(meta_path.read_text())
            meta.setdefault("resumes", []).append(this)
        else:
            meta.update(finished=this["finished"], load_end=this["load_end"], minutes=this["minutes"])
        meta_path.write_text(json.dumps(meta, indent=1, default=float) + "\n")
    text = render(meta, grid, cost, cfg, doc, plot_path)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    C.log(f"wrote {doc} and {plot_path}")


if __name__ == "__main__":
    main()
