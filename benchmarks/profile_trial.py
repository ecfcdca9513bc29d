"""Where a trial's time goes: ``cProfile`` over a few ``search()`` trials, broken down.

The search runs on a trained dense model with the benchmark's settings (default SQLite storage
in a temporary folder, median pruner); the profile covers the ``study.optimize`` part only
(one-time setup is reported separately). Categories are cumulative times of named functions
(they nest as indented), so the shares add up within a level, not across levels.

Run alone:  .venv/bin/python benchmarks/profile_trial.py [--model lenet5] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def _find(stats: pstats.Stats, file_part: str, func: str) -> list[tuple]:
    return [k for k in stats.stats if file_part in k[0] and k[2] == func]  # type: ignore[attr-defined]


def _cum(stats: pstats.Stats, file_part: str, func: str, *, caller: tuple[str, str] | None = None) -> float:
    """Cumulative seconds of ``func`` (in a file containing ``file_part``), optionally only the
    calls made from ``caller`` = (file part, function)."""
    total = 0.0
    for key in _find(stats, file_part, func):
        cc, nc, tt, ct, callers = stats.stats[key]  # type: ignore[attr-defined]
        if caller is None:
            total += ct
        else:
            for ck, v in callers.items():
                if caller[0] in ck[0] and ck[2] == caller[1]:
                    total += v[3]
    return total


def _calls(stats: pstats.Stats, file_part: str, func: str) -> int:
    return sum(stats.stats[k][1] for k in _find(stats, file_part, func))  # type: ignore[attr-defined]


def _tottime_where(stats: pstats.Stats, pred) -> float:
    return sum(v[2] for k, v in stats.stats.items() if pred(k))  # type: ignore[attr-defined]


def profile(model: str, data: str, fraction: float, cfg: C.Config, *, n_trials: int, seed: int = 0,
            heuristics: tuple[str, ...] | None = None) -> dict[str, Any]:
    import sparsesearch
    from sparsesearch import search as search_mod

    dense = C.train_dense_model(model, data, seed, cfg)
    # warm the imports (optuna storage, sqlalchemy, ...) so the profile shows steady state
    with tempfile.TemporaryDirectory() as tmp:
        sparsesearch.search(copy.deepcopy(dense.model), dense.splits, fraction, trained=True, n_trials=1,
                            seed=seed, space=C.search_space(cfg), storage=f"sqlite:///{tmp}/w.db",
                            runs_dir=tmp, heuristics=(), study_name="warm")
    prof = cProfile.Profile()
    kw: dict[str, Any] = {} if heuristics is None else {"heuristics": heuristics}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prof.enable()
        res = sparsesearch.search(copy.deepcopy(dense.model), dense.splits, fraction, trained=True,
                                  n_trials=n_trials, seed=seed, space=C.search_space(cfg), pruner="median",
                                  storage=f"sqlite:///{tmp}/study.db", runs_dir=tmp, study_name="profile", **kw)
        prof.disable()
        wall = time.perf_counter() - t0
        trials = res.study.get_trials(deepcopy=False)
    del search_mod
    st = pstats.Stats(prof)
    S, T, R, M, B, P = ("sparsesearch/search.py", "sparsesearch/train.py", "sparsesearch/recipe.py",
                        "sparsesearch/masks.py", "sparsesearch/budget.py", "sparsesearch/prune.py")
    optimize = _cum(st, "optuna/study/_optimize.py", "_run_trial")
    run = _cum(st, S, "_run")
    fit = _cum(st, T, "fit", caller=(R, "apply_recipe"))
    eval_in_fit = _cum(st, T, "evaluate", caller=(T, "fit"))
    eval_extra = _cum(st, T, "evaluate", caller=(S, "_run"))
    storage_tt = _tottime_where(st, lambda k: "sqlalchemy" in k[0] or "optuna/storages" in k[0]
                                or "sqlite3" in k[2])
    sampler_tt = _tottime_where(st, lambda k: "optuna/samplers" in k[0] or "optuna/_transform" in k[0]
                                or "optuna/distributions" in k[0])
    rows = [
        ("all trials (optuna _run_trial)", optimize, 0),
        ("objective (sparsesearch _run)", run, 1),
        ("allocation (BudgetPlan.heuristic / project)",
         _cum(st, B, "heuristic", caller=(S, "_run")) + _cum(st, B, "project", caller=(S, "_run")), 2),
        ("apply_recipe", _cum(st, R, "apply_recipe", caller=(S, "_run")), 2),
        ("copy of the dense model (deepcopy)", _cum(st, "copy.py", "deepcopy", caller=(R, "apply_recipe")), 3),
        ("masks (apply_sparsity: exact_mask + parametrize)", _cum(st, P, "apply_sparsity", caller=(R, "apply_recipe")), 3),
        ("fit (fine-tuning)", fit, 3),
        ("training steps (fit minus per-epoch validation)", fit - eval_in_fit, 4),
        ("per-epoch validation (evaluate in fit)", eval_in_fit, 4),
        ("batching (iterate_batches, train + val)", _cum(st, T, "iterate_batches"), 4),
        ("mask multiply in forward (Mask.forward)", _cum(st, M, "forward"), 4),
        ("backward (autograd)", _cum(st, "torch/autograd/__init__.py", "backward"), 4),
        ("optimizer step", _cum(st, "torch/optim/optimizer.py", "wrapper"), 4),
        ("final validation again (evaluate in _run)", eval_extra, 2),
        ("count_params", _cum(st, B, "count_params", caller=(S, "_run")), 2),
        ("trial.set_user_attr", _cum(st, "optuna/trial/_trial.py", "set_user_attr", caller=(S, "_run")), 2),
        ("trial.report + should_prune", _cum(st, "optuna/trial/_trial.py", "report")
         + _cum(st, "optuna/trial/_trial.py", "should_prune"), 2),
        ("trial.suggest_*", _cum(st, "optuna/trial/_trial.py", "suggest_float"), 2),
        ("outside the objective (ask/tell, sampler, state)", optimize - run, 1),
    ]
    out_rows = [{"what": w, "seconds": s, "level": lvl, "per_trial": s / max(len(trials), 1),
                 "share": s / optimize if optimize else 0.0} for w, s, lvl in rows]
    whole = wall - 0.0
    for w, sec in (("whole search() call: storage (SQLAlchemy + optuna.storages + sqlite3, self time)", storage_tt),
                   ("whole search() call: sampler (optuna.samplers, self time)", sampler_tt)):
        out_rows.append({"what": w, "seconds": sec, "level": 0, "per_trial": sec / max(len(trials), 1),
                         "share": sec / whole if whole else 0.0, "of_wall": True})
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    top = [line for line in buf.getvalue().splitlines() if line.strip()][-18:]
    return {
        "model": model, "data": data, "fraction": fraction, "n_trials": len(trials),
        "epochs": cfg.ft_epochs, "wall": wall, "setup": wall - optimize,
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "heuristic_trials": sum(bool(t.user_attrs.get("heuristic")) for t in trials),
        "evaluate_calls": _calls(st, T, "evaluate"), "rows": out_rows, "top_tottime": top,
        "load": C.load_average(),
    }


def render(p: dict[str, Any]) -> str:
    lines = [
        f"{p['model']} on {p['data']} at {p['fraction']:.0%} kept, {p['n_trials']} trials "
        f"({p['heuristic_trials']} heuristic seeds, {p['pruned']} pruned), {p['epochs']} fine-tune epochs; "
        f"search() wall {p['wall']:.1f} s, of which one-time setup (storage, scores, seeds, best-model test) "
        f"{p['setup']:.1f} s; load average {p['load']}.",
        "",
        "| where | s | per trial (s) | share of all trials' time (storage, sampler: of the whole call) |",
        "|---|---:|---:|---:|",
    ]
    for r in p["rows"]:
        name = ("&nbsp;&nbsp;&nbsp;" * r["level"]) + ("↳ " if r["level"] else "") + r["what"]
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['per_trial']:.3f} | {100 * r['share']:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data", default="mnist-5k")
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--heuristics", nargs="*", default=["lamp"],
                   help="heuristic seeds (default: lamp only, so TPE trials are in the profile too)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    cfg = C.QUICK if args.quick else C.Config()
    res = profile(args.model, args.data, args.fraction, cfg, n_trials=args.trials,
                  heuristics=tuple(args.heuristics))
    print(render(res))
    print("\n".join(res["top_tottime"]))
    print(json.dumps({k: v for k, v in res.items() if k not in ("rows", "top_tottime")}, default=float))


if __name__ == "__main__":
    main()
