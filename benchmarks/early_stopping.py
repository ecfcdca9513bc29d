"""Effect of early stopping: the same search with Optuna's median pruner and without it.

Target: the best heuristic's validation accuracy (uniform / global / LAMP / ERK at the
benchmark's learning-rate grid, the seeds ``search()`` enqueues). Two settings:

* from scratch (``heuristics=()``): TPE over allocations and learning rate; time until the
  first trial reaches the target (>=), with ``pruner="median"`` vs ``pruner="none"``.
* seeded (the default ``search()``): the heuristic seeds run first (never pruned), so both
  reach the target at the same time; reported: time until a trial *beats* the best seed
  (>), the whole run's time, and how many trials the pruner stopped.

Times are cumulative trial durations from the first trial's start (the study's own clock),
same process, same machine. Run alone:  .venv/bin/python benchmarks/early_stopping.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def _time_to(trials: list[dict[str, Any]], target: float, *, strict: bool, skip_seeds: bool) -> tuple[float | None, int | None]:
    """Seconds from the first trial's start until the first COMPLETE trial reaching ``target``
    completes, and that trial's number (None, None when never)."""
    starts = [t["start"] for t in trials if t["start"] is not None]
    if not starts:
        return None, None
    t0 = min(starts)
    for t in sorted(trials, key=lambda t: t["complete"] or float("inf")):
        if t["state"] != "COMPLETE" or (skip_seeds and t["heuristic"]):
            continue
        ok = t["value"] > target if strict else t["value"] >= target
        if ok:
            return t["complete"] - t0, t["number"]
    return None, None


def _span(trials: list[dict[str, Any]]) -> float:
    starts = [t["start"] for t in trials if t["start"] is not None]
    ends = [t["complete"] for t in trials if t["complete"] is not None]
    return max(ends) - min(starts)


def measure(model: str, data: str, fraction: float, cfg: C.Config, *, seeds: tuple[int, ...],
            n_trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "data": data, "fraction": fraction, "n_trials": n_trials,
                           "epochs": cfg.ft_epochs, "runs": []}
    for seed in seeds:
        dense = C.train_dense_model(model, data, seed, cfg)
        runs: dict[str, Any] = {}
        for mode in ("seeded", "scratch"):
            for pruner in ("median", "none"):
                kw: dict[str, Any] = {} if mode == "seeded" else {"heuristics": ()}
                s = C.run_search(dense, fraction, cfg, n_trials=n_trials, pruner=pruner, replay=False, **kw)
                runs[(mode, pruner)] = s["search"]
        target = runs[("seeded", "none")]["best_seed_val"]
        assert target == runs[("seeded", "median")]["best_seed_val"]
        for (mode, pruner), s in runs.items():
            trials = s["trials"]
            strict = mode == "seeded"
            t, number = _time_to(trials, target, strict=strict, skip_seeds=strict)
            rec = {"seed": seed, "mode": mode, "pruner": pruner, "target": target,
                   "time_to_target": t, "trial_reaching": number, "span": _span(trials),
                   "wall": s["seconds"], "pruned": s["pruned"], "best_val": s["val"],
                   "epochs_run": sum(x["epochs"] for x in trials), "test": s["test"]}
            out["runs"].append(rec)
            tt = "never" if t is None else f"{t:.1f}s (trial {number})"
            C.log(f"early stopping {model} {fraction:.0%} seed {seed} {mode}/{pruner}: target {target:.4f} "
                  f"{'beaten' if strict else 'reached'} at {tt}; {s['pruned']} pruned, span {rec['span']:.1f}s, "
                  f"best val {s['val']:.4f}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    cfg = C.QUICK if args.quick else C.Config()
    res = measure("lenet300", "mnist-5k", 0.02, cfg, seeds=(0,) if args.quick else (0, 1, 2),
                  n_trials=12 if args.quick else 36)
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
