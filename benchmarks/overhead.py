"""Engine overhead: time per trial of ``sparsesearch.search()`` vs a bare PyTorch loop.

The bare loop is what a user would write by hand for the same work: copy the dense model,
``torch.nn.utils.prune.l1_unstructured`` each layer at the trial's per-layer amount, fine-tune
with SGD momentum + cosine schedule over the same in-memory tensors (same batch size, epochs
and learning rate), validate after every epoch (what the pruner needs). It replays exactly the
allocations the search's trials used, in the same process, interleaved with the search runs
(search, bare, bare, search, ...) so both see the same machine load.

Two ratios: per trial (Optuna's trial duration: sampling, allocation, masks, fine-tuning,
evaluation and the storage writes made during the trial) and end to end (``search()`` wall
time, one-time setup included, divided by the number of trials).

Run alone:  .venv/bin/python benchmarks/overhead.py [--quick] [--storages sqlite,journal,memory]
(writes benchmarks/results/overhead.json, or --out)
"""

from __future__ import annotations

import argparse
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
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def bare_trial(dense: C.Dense, sparsity: dict[str, float], *, lr: float, epochs: int,
               batch_size: int, seed: int) -> tuple[float, float, float]:
    """Prune + fine-tune + validate by hand; returns (validation accuracy, seconds, CPU seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    net = copy.deepcopy(dense.model)
    modules = dict(net.named_modules())
    for name, amount in sparsity.items():
        w = modules[name].weight
        k = min(int(round(amount * w.numel())), w.numel() - 1)
        if k > 0:
            torch_prune.l1_unstructured(modules[name], "weight", amount=k)
    x, y = dense.splits.train.x, dense.splits.train.y
    vx, vy = dense.splits.val.x, dense.splits.val.y
    n = len(y)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    total = max(1, epochs * math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(seed)
    acc = float("nan")
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(vy), 1024):
                correct += int((net(vx[i:i + 1024]).argmax(1) == vy[i:i + 1024]).sum())
        acc = correct / len(vy)
    return acc, time.perf_counter() - t0, time.process_time() - c0


def search_run(dense: C.Dense, fraction: float, cfg: C.Config, n_trials: int, lr: float,
               storage: str) -> dict[str, Any]:
    import optuna

    import sparsesearch

    space = {**C.search_space(cfg), "lr": lr, "heuristic_lrs": [lr]}
    with tempfile.TemporaryDirectory() as tmp:
        if storage == "memory":
            store: Any = optuna.storages.InMemoryStorage()
        elif storage == "sqlite-wal":  # a possible engine fix: WAL journal, fsync at checkpoints only
            from sqlalchemy import event

            store = optuna.storages.RDBStorage(f"sqlite:///{tmp}/study.db")

            @event.listens_for(store.engine, "connect")
            def _pragmas(conn, _record):  # noqa: ANN001
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            store.engine.dispose()  # later connections get the pragmas
        elif storage == "journal":  # Optuna's journal file, via sparsesearch's own storage code
            store = f"journal:{tmp}/journal.log"
        else:  # the default: a URL, opened by sparsesearch's own storage code
            store = f"sqlite:///{tmp}/study.db"
        marks: list[float] = []
        t0, c0 = time.perf_counter(), time.process_time()
        # screening only, exactly n_trials full trials: no finalist (whose long retraining the
        # bare loop does not replay) and a compute budget the trials spend to the epoch
        compute = {"epochs": n_trials * cfg.ft_epochs, "final_share": 0.0}
        res = sparsesearch.search(copy.deepcopy(dense.model), dense.splits, fraction, trained=True,
                                  n_trials=n_trials, seed=dense.seed, space=space, pruner="none",
                                  compute=compute,
                                  storage=store, study_name="overhead", runs_dir=tmp,
                                  callbacks=[lambda _s, _t: marks.append(time.process_time())])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        trials = [t for t in res.study.get_trials(deepcopy=False) if t.duration is not None]
    return {
        "wall": wall,
        "cpu": cpu,
        # CPU seconds from one trial's end to the next (the trial plus ask/tell), steady state
        "cpu_trial": statistics.mean(b - a for a, b in zip(marks, marks[1:])) if len(marks) > 1 else float("nan"),
        "durations": [t.duration.total_seconds() for t in trials],
        "sparsity": [t.user_attrs["sparsity"] for t in trials],
        "values": [t.value for t in trials],
    }


def measure(model: str, data: str, cfg: C.Config, *, fraction: float = 0.02, n_trials: int = 12,
            rounds: int = 3, lr: float = 0.05, storages: tuple[str, ...] = ("sqlite",),
            seed: int = 0) -> dict[str, Any]:
    dense = C.train_dense_model(model, data, seed, cfg)
    # warm-up of both code paths (imports, allocator); then round 0 runs the search first and
    # the bare loop replays its allocations (the search is seeded: every run samples the same)
    search_run(dense, fraction, cfg, 1, lr, "memory")
    bare_trial(dense, {}, lr=lr, epochs=1, batch_size=cfg.batch_size, seed=0)
    allocations: list[dict[str, float]] | None = None
    out: dict[str, Any] = {"model": model, "data": data, "fraction": fraction, "n_trials": n_trials,
                           "epochs": cfg.ft_epochs, "batch_size": cfg.batch_size, "lr": lr, "rounds": []}
    for r in range(rounds):
        for storage in storages:
            rec: dict[str, Any] = {"round": r, "storage": storage, "load": C.load_average()}
            for what in (("search", "bare") if r % 2 == 0 else ("bare", "search")):
                if what == "search":
                    s = search_run(dense, fraction, cfg, n_trials, lr, storage)
                    if allocations is None:
                        allocations = s["sparsity"]
                    elif s["sparsity"] != allocations:  # not expected: the search is seeded
                        rec["allocations_differ"] = True
                    rec["search_wall"] = s["wall"]
                    rec["search_cpu"] = s["cpu"]
                    rec["search_trial"] = statistics.mean(s["durations"])
                    rec["search_cpu_trial"] = s["cpu_trial"]
                else:
                    assert allocations is not None
                    t0, c0 = time.perf_counter(), time.process_time()
                    bare = [bare_trial(dense, sp, lr=lr, epochs=cfg.ft_epochs, batch_size=cfg.batch_size,
                                       seed=i) for i, sp in enumerate(allocations)]
                    rec["bare_wall"] = time.perf_counter() - t0
                    rec["bare_cpu"] = time.process_time() - c0
                    rec["bare_trial"] = statistics.mean(b[1] for b in bare)
                    rec["bare_cpu_trial"] = statistics.mean(b[2] for b in bare[1:] or bare)
            rec["ratio_trial"] = rec["search_trial"] / rec["bare_trial"]
            rec["ratio_end_to_end"] = rec["search_wall"] / rec["bare_wall"]
            rec["ratio_cpu_trial"] = rec["search_cpu_trial"] / rec["bare_cpu_trial"]
            rec["ratio_cpu_end_to_end"] = rec["search_cpu"] / rec["bare_cpu"]
            C.log(f"overhead {model} [{storage}] round {r}: per trial {rec['search_trial']:.3f}s vs bare "
                  f"{rec['bare_trial']:.3f}s = {rec['ratio_trial']:.3f}; end to end {rec['ratio_end_to_end']:.3f}; "
                  f"CPU per trial {rec['ratio_cpu_trial']:.3f}, end to end {rec['ratio_cpu_end_to_end']:.3f}")
            out["rounds"].append(rec)
    for storage in storages:
        rs = [x for x in out["rounds"] if x["storage"] == storage]
        out[f"{storage}_ratio_trial"] = statistics.median(x["ratio_trial"] for x in rs)
        out[f"{storage}_ratio_end_to_end"] = statistics.median(x["ratio_end_to_end"] for x in rs)
        out[f"{storage}_search_trial"] = statistics.median(x["search_trial"] for x in rs)
        out[f"{storage}_bare_trial"] = statistics.median(x["bare_trial"] for x in rs)
        out[f"{storage}_ratio_cpu_trial"] = statistics.median(x["ratio_cpu_trial"] for x in rs)
        out[f"{storage}_ratio_cpu_end_to_end"] = statistics.median(x["ratio_cpu_end_to_end"] for x in rs)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    p.add_argument("--storages", default="sqlite,memory",
                   help="comma-separated: sqlite (the default storage), sqlite-wal, journal, memory")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "overhead.json"),
                   help="where the result is written as JSON (also printed)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    cfg = C.QUICK if args.quick else C.Config()
    started = time.strftime("%Y-%m-%d %H:%M")
    res = measure("lenet300", "mnist-5k", cfg, rounds=args.rounds or (1 if args.quick else 3),
                  n_trials=6 if args.quick else 12, storages=tuple(args.storages.split(",")))
    doc = {"command": " ".join(["benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])]),
           "started": started, "machine": C.machine(), "code": C.git_revision(),
           "load_after": C.load_average(), "results": [res]}
    text = json.dumps(doc, indent=1, default=float)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
