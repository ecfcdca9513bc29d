"""CPU latency of dense vs compacted models against their MACs ratio (a script, not a test).

For LeNet-5 and the zoo's CIFAR ResNet (random weights, warmed-up BatchNorm statistics), prune
25 / 50 / 75 % of every layer's output channels with ``l1-filter``, mask the dependent BatchNorm
channels, compact, and time dense and compacted models on the CPU (eval mode, no grad):
median of ``--repeats`` runs at batch 1 and batch 64, dense and compacted runs interleaved so
that load changes hit both alike. Prints a Markdown table.

    python benchmarks/compaction_latency.py            # 1 CPU thread (stable numbers)
    python benchmarks/compaction_latency.py --threads 0 --repeats 50   # torch's default threads
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

import sparsesearch
from sparsesearch.compact import compact, dependent_masks
from sparsesearch.macs import count_macs
from sparsesearch.models import build_model

MODELS = {"lenet5": (1, 28, 28), "cifar-resnet": (3, 32, 32)}


def _warm_bn(model: torch.nn.Module, shape) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, *shape))
    model.eval()


def _time_pair(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a(x)`` and ``b(x)``, runs interleaved (after warm-up runs)."""
    ta, tb = [], []
    with torch.no_grad():
        for _ in range(3):
            a(x)
            b(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            a(x)
            t1 = time.perf_counter()
            b(x)
            t2 = time.perf_counter()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def _producer_channels(model: torch.nn.Module) -> int:
    return sum(
        m.weight.shape[0]
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )


def run(models, fractions, repeats: int, seed: int = 0) -> list[dict]:
    rows = []
    for name in models:
        shape = MODELS[name]
        torch.manual_seed(seed)
        dense = build_model(name)
        _warm_bn(dense, shape)
        x1 = torch.randn(1, *shape)
        x64 = torch.randn(64, *shape)
        dense_macs = count_macs(dense, x1)
        dense_params = sum(p.numel() for p in dense.parameters())
        dense_channels = _producer_channels(dense)
        for frac in fractions:
            masked = copy.deepcopy(dense)
            sparsesearch.prune(masked, "l1-filter", frac, example_input=x1)
            dependent_masks(masked, x1)
            masked.eval()
            result = compact(masked, example_input=x1, keep_masks=False)
            small = result.model.eval()
            macs = count_macs(small, x1)
            row = {
                "model": name,
                "pruned": frac,
                "removed": 1 - _producer_channels(small) / dense_channels,
                "params": result.params_after / dense_params,
                "macs": macs / dense_macs,
            }
            for batch, x in ((1, x1), (64, x64)):
                td, tc = _time_pair(dense, small, x, repeats if batch == 1 else max(5, repeats // 4))
                row[f"dense_ms_{batch}"] = td * 1e3
                row[f"compact_ms_{batch}"] = tc * 1e3
                row[f"ratio_{batch}"] = tc / td
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | channels pruned / removed | params ratio | MACs ratio "
        "| batch 1: dense → compacted ms | latency ratio b1 "
        "| batch 64: dense → compacted ms | latency ratio b64 |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['pruned']:.0%} / {r['removed']:.0%} | {r['params']:.3f} "
            f"| {r['macs']:.3f} | {r['dense_ms_1']:.2f} → {r['compact_ms_1']:.2f} "
            f"| {r['ratio_1']:.2f} | {r['dense_ms_64']:.1f} → {r['compact_ms_64']:.1f} "
            f"| {r['ratio_64']:.2f} |"
        )
    return head + "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = run(args.models, args.fractions, args.repeats, args.seed)
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats} runs (batch 1) / "
        f"{max(5, args.repeats // 4)} runs (batch 64)\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
