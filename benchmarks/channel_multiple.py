"""What ``channel_multiple`` buys: CPU latency of channel-pruned models at equal budgets.

For the peers benchmark's BatchNorm CNN (benchmarks/peers.py, ``bn-cnn``) at its four targets
(30 % / 10 % of the parameters, 40 % / 15 % of the MACs), the ``uniform`` and ``global`` (L1)
allocations of sparsesearch's channel plan with ``channel_multiple`` 1, 8 and 16: each
allocation is masked (``sparsesearch.prune`` with ``l1-filter``), compacted, counted and timed
at batch 1 and 64 (``torch.utils.benchmark`` medians, rounds interleaved with the dense model,
one torch thread; latency does not depend on the weights, so the model is untrained). Accuracy
is not measured here (it is the search's job, benchmarks/peers.py).

Run:  .venv/bin/python benchmarks/channel_multiple.py [--rounds 5]
(writes benchmarks/results/channel_multiple.json and prints a Markdown table)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import peers as P  # noqa: E402

import sparsesearch  # noqa: E402
from sparsesearch.budget import plan_budget  # noqa: E402

TARGETS = (("params", 0.3), ("params", 0.1), ("macs", 0.4), ("macs", 0.15))
MULTIPLES = (1, 8, 16)
HEURISTICS = ("uniform", "global")


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return tbench.Timer("m(x)", globals={"m": model, "x": x}).blocked_autorange(min_run_time=0.3).median


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "channel_multiple.json"))
    args = p.parse_args(argv)
    C.set_threads(1)
    splits = sparsesearch.load_dataset("mnist-5k", seed=0)
    torch.manual_seed(0)
    dense = P.BNCNN(splits.num_classes).eval()
    x2 = P.example(splits, 2)
    layers = sparsesearch.find_layers(dense)
    scores = {lay.name: lay.module.weight.detach().abs().flatten(1).sum(1) for lay in layers}
    models: dict[str, torch.nn.Module] = {"dense": dense}
    rows = []
    for kind, fraction in TARGETS:
        budget = P.budget_of(dense, splits, kind, fraction)
        for m in MULTIPLES:
            try:
                plan = plan_budget(dense, layers, budget, granularity="channel", metric=kind,
                                   example_input=x2, channel_multiple=m)
            except sparsesearch.BudgetError as exc:  # blocks too coarse for this target
                rows.append({"key": None, "target": f"{round(fraction * 100)} % {kind}", "multiple": m,
                             "infeasible": str(exc)})
                continue
            for h in HEURISTICS:
                keep = plan.heuristic(h, scores)
                net = sparsesearch.prune(copy.deepcopy(dense), "l1-filter", plan.to_sparsity(keep), example_input=x2)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    small = sparsesearch.compact(net, example_input=x2).model.eval()
                key = f"{kind}{fraction}-m{m}-{h}"
                models[key] = small
                counts = P.measure(small, splits)
                rows.append({"key": key, "target": f"{round(fraction * 100)} % {kind}", "multiple": m,
                             "heuristic": h, "channels": [keep[lay.name] for lay in layers],
                             **counts, "budget_used": counts[kind] / budget})
    times: dict[str, dict[int, list[float]]] = {k: {1: [], 64: []} for k in models}
    for r in range(args.rounds):
        for batch in (1, 64):
            x = P.example(splits, batch)
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                times[k][batch].append(_time(models[k], x))
    for row in rows:
        if row["key"] is None:
            continue
        for batch in (1, 64):
            row[f"latency_b{batch}"] = statistics.median(times[row["key"]][batch]) / statistics.median(times["dense"][batch])
    doc = {"command": " ".join(["benchmarks/channel_multiple.py", *(argv if argv is not None else sys.argv[1:])]),
           "started": time.strftime("%Y-%m-%d %H:%M"), "machine": C.machine(), "code": C.git_revision(),
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print("| target | allocation | channel_multiple | channels kept | params | MACs | % of target | latency b1 (× dense) | latency b64 (× dense) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["key"] is None:
            print(f"| {row['target']} | – | {row['multiple']} | infeasible: the blocks' minimum exceeds the target | | | | | |")
            continue
        print(f"| {row['target']} | {row['heuristic']} | {row['multiple']} | {', '.join(map(str, row['channels']))} | "
              f"{row['params'] / 1e3:.1f} k | {row['macs'] / 1e6:.2f} M | {100 * row['budget_used']:.1f} | "
              f"{row['latency_b1']:.2f} | {row['latency_b64']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
