"""What the engine changes proposed in ``benchmarks/findings.md`` would save (an experiment).

Not part of ``make bench``: it patches sparsesearch internals *in this process only* to preview
three changes to ``sparsesearch/search.py`` / storage, and measures time per trial against the
bare PyTorch loop of ``overhead.py``, interleaved in one process:

  as-is       ``search()`` unchanged (default SQLite storage)
  +no-reeval  the trial's final validation pass skipped when nothing changed since the last
              per-epoch one (``evaluate`` memoised on the parameters' version counters)
  +heur-cache heuristic allocations computed once per (plan, heuristic, scores), not per trial
  +journal    all of the above with ``journal:PATH`` storage instead of SQLite

    .venv/bin/python benchmarks/engine_fixes.py [--model lenet5] [--trials 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import copy
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import overhead  # noqa: E402


@contextlib.contextmanager
def patched(no_reeval: bool, heur_cache: bool) -> Iterator[None]:
    import sparsesearch.train as T
    from sparsesearch.budget import BudgetPlan

    orig_eval, orig_heur = T.evaluate, BudgetPlan.heuristic
    if no_reeval:
        memo: dict[Any, float] = {}

        def evaluate(model, dataset, **kw):  # noqa: ANN001
            key = (id(model), id(dataset), tuple((id(t), t._version) for t in model.state_dict(keep_vars=True).values()))
            if key not in memo:
                memo.clear()
                memo[key] = orig_eval(model, dataset, **kw)
            return memo[key]

        T.evaluate = evaluate
    if heur_cache:
        cache: dict[Any, Any] = {}

        def heuristic(self, name, scores=None):  # noqa: ANN001
            key = (id(self), name, id(scores))
            if key not in cache:
                cache[key] = orig_heur(self, name, scores)
            return dict(cache[key])

        BudgetPlan.heuristic = heuristic
    try:
        yield
    finally:
        T.evaluate, BudgetPlan.heuristic = orig_eval, orig_heur


def run_variant(dense: C.Dense, cfg: C.Config, variant: str, n_trials: int, lr: float) -> dict[str, Any]:
    import sparsesearch

    space = {**C.search_space(cfg), "lr": lr, "heuristic_lrs": [lr]}
    with tempfile.TemporaryDirectory() as tmp, patched(variant != "as-is", variant in ("+heur-cache", "+journal")):
        store = f"journal:{tmp}/journal.log" if variant == "+journal" else f"sqlite:///{tmp}/study.db"
        marks: list[float] = []
        t0 = time.perf_counter()
        res = sparsesearch.search(copy.deepcopy(dense.model), dense.splits, 0.02, trained=True, n_trials=n_trials,
                                  seed=dense.seed, space=space, pruner="none", storage=store,
                                  study_name="fixes", runs_dir=tmp,
                                  callbacks=[lambda _s, _t: marks.append(time.process_time())])
        wall = time.perf_counter() - t0
        trials = [t for t in res.study.get_trials(deepcopy=False) if t.duration is not None]
    return {"wall": wall, "trial": statistics.mean(t.duration.total_seconds() for t in trials),
            "cpu_trial": statistics.mean(b - a for a, b in zip(marks, marks[1:])) if len(marks) > 1 else float("nan"),
            "values": [t.value for t in trials], "sparsity": [t.user_attrs["sparsity"] for t in trials]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data", default="mnist-5k")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    cfg = C.Config()
    dense = C.train_dense_model(args.model, args.data, 0, cfg)
    run_variant(dense, cfg, "as-is", 1, args.lr)  # warm-up
    variants = ["as-is", "+no-reeval", "+heur-cache", "+journal", "bare"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    allocations = None
    values = {}
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            if v == "bare":
                if allocations is None:
                    continue
                ts = [overhead.bare_trial(dense, sp, lr=args.lr, epochs=cfg.ft_epochs, batch_size=cfg.batch_size,
                                          seed=i) for i, sp in enumerate(allocations)]
                times[v].append(statistics.mean(t[1] for t in ts))
                cpu[v].append(statistics.mean(t[2] for t in ts[1:]))
            else:
                out = run_variant(dense, cfg, v, args.trials, args.lr)
                allocations = allocations or out["sparsity"]
                values[v] = out["values"]
                times[v].append(out["trial"])
                cpu[v].append(out["cpu_trial"])
        C.log(f"round {r}: " + ", ".join(f"{v} {times[v][-1]:.3f}s/{cpu[v][-1]:.3f}cpu" for v in variants if times[v])
              + f"; load {C.load_average()}")
    bare = statistics.median(times["bare"])
    bare_cpu = statistics.median(cpu["bare"])
    summary = {v: {"s_per_trial": statistics.median(ts), "ratio": statistics.median(ts) / bare, "rounds": ts,
                   "cpu_per_trial": statistics.median(cpu[v]), "cpu_ratio": statistics.median(cpu[v]) / bare_cpu,
                   "cpu_rounds": cpu[v]}
               for v, ts in times.items() if ts}
    same = all(values[v] == values["as-is"] for v in values)
    print(json.dumps({"model": args.model, "trials": args.trials, "epochs": cfg.ft_epochs, "summary": summary,
                      "same_values": same, "load": C.load_average()}, indent=1))


if __name__ == "__main__":
    main()
