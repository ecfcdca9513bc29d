"""LeNet-5 on MNIST-5k at 1 % kept: global magnitude, LAMP and sparsesearch's search.

Prints the test accuracy of each (mean ± std over 3 seeds; learning rates tuned on
validation, same dense weights, same fine-tuning epochs) and the wall time of each. The
protocol is the one of ``benchmarks/run_all.py`` (see ``benchmarks/common.py``); ``make bench``
computes these cells as part of its grid and prints this same table into
``docs/benchmarks.md`` instead of running them twice.

Run alone:  .venv/bin/python benchmarks/search_vs_heuristics.py [--seeds 0 1 2] [--trials N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

MODEL, DATA, FRACTION = "lenet5", "mnist-5k", 0.01
SHOWN = ("global", "lamp", "search")


def render(records: list[dict[str, Any]], cfg: C.Config) -> str:
    rows = C.select(records, model=MODEL, data=DATA, fraction=FRACTION)
    seeds = sorted({r["seed"] for r in rows})
    dense = C.select(rows, method="dense")
    budget = rows[0]["budget"] if rows else 0
    total = rows[0]["total"] if rows else 0
    out = [
        f"LeNet-5 on MNIST-5k, {FRACTION:.0%} of parameters kept ({budget:,} of {total:,}), "
        f"seeds {', '.join(map(str, seeds))}",
        f"fine-tuning {cfg.ft_epochs} epochs; baselines' lr tuned over {', '.join(map(str, cfg.lrs))}; "
        f"search: {cfg.n_trials} trials",
        f"{'method':<26} {'test acc (%)':>16} {'val acc (%)':>16} {'wall time (s)':>14}",
    ]
    if dense:
        out.append(f"{'dense (not pruned)':<26} {C.pct([r['test'] for r in dense]):>16} "
                   f"{C.pct([r['val'] for r in dense]):>16} {C.mean_std([r['seconds'] for r in dense])[0]:>14.1f}")
    for m in SHOWN:
        rs = C.select(rows, method=m)
        if not rs:
            continue
        out.append(f"{C.LABELS[m]:<26} {C.pct([r['test'] for r in rs]):>16} {C.pct([r['val'] for r in rs]):>16} "
                   f"{C.mean_std([r['seconds'] for r in rs])[0]:>14.1f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=None, help="search trials (default: the benchmark's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke test: 1 fine-tune epoch, 2 lrs, 10 trials")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    cfg = C.Config()
    if args.quick:
        cfg = dataclasses.replace(cfg, dense=(("lenet5", 2, 0.02),), ft_epochs=1, lrs=(0.03, 0.08), n_trials=10)
    if args.trials is not None:
        cfg = dataclasses.replace(cfg, n_trials=args.trials)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    for seed in args.seeds:
        dense = C.train_dense_model(MODEL, DATA, seed, cfg)
        records += C.run_cell(dense, FRACTION, cfg)
    print(render(records, cfg))
    print(f"(total {time.perf_counter() - t0:.0f} s; load average {C.load_average()})")


if __name__ == "__main__":
    main()
