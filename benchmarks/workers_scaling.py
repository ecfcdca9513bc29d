"""Trials per minute: 1 worker with all CPU threads vs N workers with 1 thread each.

For each study (the packaged ``digits-mlp`` and ``default`` = LeNet-5 on MNIST-5k), the dense
model and strategy scores are computed once first (untimed, cached in the run folder), then
each configuration adds the same number of trials to a fresh journal-file study through
:func:`sparsesearch.workers.run_workers` (so both pay the same process start-up):

- ``1 worker``:  ``run_workers(1, threads_per_worker=<all CPUs>)``
- ``N workers``: ``run_workers(N, threads_per_worker=1)``

The pruner is off, so every trial does the same work (the study's fine-tuning epochs).
Configurations alternate (1, N, 1, N, ...) over ``--repeats``. Two rates are reported: over the trials' own span (first trial start to last trial end:
what adding workers buys once they run) and end to end (the ``run_workers`` call, including
worker start-up and loading the result).

The machine's load is recorded with each run: on a shared machine, compare a run with its pair
(the 1-worker run just before it), not across repeats.

Run:  .venv/bin/python benchmarks/workers_scaling.py [--quick] [--repeats R] [--workers N] [--json F]
      .venv/bin/python benchmarks/workers_scaling.py --from-json F     (the table again)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import torch  # noqa: E402

from sparsesearch.config import load_study_config  # noqa: E402
from sparsesearch.search import search  # noqa: E402
from sparsesearch.workers import _cpu_count, run_workers  # noqa: E402

STUDIES = (("digits-mlp", "digits / digits-mlp", 24), ("default", "MNIST-5k / LeNet-5", 12))


def kwargs_for(study: str, runs_dir: Path, n_trials: int, storage: str) -> dict:
    cfg = load_study_config(study)
    kw = cfg.search_kwargs(runs_dir)
    kw.update(storage=storage, n_trials=n_trials, timeout=None, pruner="none", evaluate_test=False)
    kw.pop("max_complete", None)
    return kw, cfg


def one_run(study: str, runs_dir: Path, n_trials: int, workers: int, threads: int, tag: str) -> dict:
    storage = f"journal:{runs_dir / f'{tag}.log'}"
    kw, cfg = kwargs_for(study, runs_dir, n_trials, storage)
    torch.manual_seed(cfg.seed)  # same initial weights as the warm-up: the dense cache hits
    start = time.perf_counter()
    result = run_workers(workers, search_kwargs=kw, threads_per_worker=threads)
    wall = time.perf_counter() - start
    trials = [t for t in result.study.get_trials(deepcopy=False) if t.state.is_finished()]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"study": study, "workers": workers, "threads": threads, "trials": len(trials),
            "states": states, "span_s": span, "wall_s": wall,
            "per_min_span": 60 * len(trials) / span, "per_min_wall": 60 * len(trials) / wall}


def render(rows: list, cpus: int, repeats: int, workers: int) -> None:
    """Markdown: one line per run (paired with the 1-worker run of the same repeat, which ran
    just before it under about the same machine load), then the medians."""
    print(f"\n{cpus} CPUs ({platform.machine()}), torch {torch.__version__}, {repeats} repeat(s), "
          "pruner off; load = 1-minute load average when the run ended\n")
    print("| study | trials | repeat | configuration | trials/min (trials' span) | trials/min (end to end) "
          "| load | speed-up vs 1 worker (span) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, n, runs in rows:
        for r in range(repeats):
            pair = runs[2 * r: 2 * r + 2]
            base = pair[0]["per_min_span"]
            for run in pair:
                conf = (f"{run['workers']} worker{'s' if run['workers'] > 1 else ''} × {run['threads']} "
                        f"thread{'s' if run['threads'] > 1 else ''}")
                print(f"| {label} | {n} | {r + 1} | {conf} | {run['per_min_span']:.1f} | "
                      f"{run['per_min_wall']:.1f} | {run['load_avg']:.1f} | {run['per_min_span'] / base:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the trials, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    parser.add_argument("--from-json", type=Path, help="only print the table of runs written by --json")
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
        repeats = len(rows[0][2]) // 2
        render(rows, _cpu_count(), repeats, args.workers)
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cpus = _cpu_count()
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory(prefix="workers-scaling-") as tmp:
        runs_dir = Path(tmp) / "runs"
        for study, label, n_trials in STUDIES:
            n = max(args.workers, n_trials // 3) if args.quick else n_trials
            kw, cfg = kwargs_for(study, runs_dir, 1, f"journal:{runs_dir / 'warm.log'}")
            torch.manual_seed(cfg.seed)
            t0 = time.perf_counter()
            search(**kw)  # untimed: trains and caches the dense model and the scores
            print(f"{label}: dense model and scores cached ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
            runs = []
            for r in range(repeats):
                for workers, threads in ((1, cpus), (args.workers, 1)):
                    tag = f"{study}-{workers}w-{r}"
                    run = one_run(study, runs_dir, n, workers, threads, tag)
                    run["load_avg"] = os.getloadavg()[0]
                    runs.append(run)
                    print(f"{label}: {workers} worker(s) x {threads} thread(s): {run['trials']} trials, "
                          f"{run['per_min_span']:.1f}/min over the trials' span, "
                          f"{run['per_min_wall']:.1f}/min end to end (load {run['load_avg']:.1f})",
                          file=sys.stderr)
            rows.append((label, n, runs))
    render(rows, cpus, repeats, args.workers)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
