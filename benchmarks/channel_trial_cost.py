"""What a channel trial's fine-tuning costs against its compacted size (issue 12, item 5).

A channel (structured) trial prunes whole output channels; since item 5 the engine removes
them for real once the final masks are on and fine-tunes the compacted model, putting the
trained weights back into the full-size model at the end (``sparsesearch.recipe.replay``).
This script times, for one recipe (``l1-filter``, the same per-layer sparsity everywhere, AdamW,
warm-up + cosine), CPU time of

  replay        ``replay(dense, recipe, data)``: what a search trial runs (scoring, masks,
                compaction + its checks, fine-tuning of the compacted model, copy back)
  masked        ``replay(..., compacted=False)``: the full-size masked model trains (before)
  compacted fit the same fine-tuning (``fit`` with the recipe's settings) run directly on the
                compacted model: the floor

and prints ``replay / compacted fit`` (issue 12's done-when: ≤ 1.2) and ``masked / compacted
fit``. Runs interleaved ``--repeats`` times, medians; 1 CPU thread.

    python benchmarks/channel_trial_cost.py                  # BN CNN on mnist-5k, 30 % / 10 %
    python benchmarks/channel_trial_cost.py --model cifar-resnet --data digits
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import sparsesearch
from sparsesearch.compact import compact
from sparsesearch.layers import find_layers
from sparsesearch.recipe import Recipe, RetrainSettings, _example, replay
from sparsesearch.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "channel_trial_cost.json"
MARKDOWN = RESULTS.with_suffix(".md")  # included in docs/benchmarks.md by run_all.py


def bn_cnn(num_classes: int = 10) -> nn.Module:
    """4 conv + BatchNorm + 2 linear with a Flatten → Linear head (~450k parameters)."""
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(
        *block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), *block(128, 128),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, num_classes),
    )


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bn-cnn", help="bn-cnn or a zoo model name")
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--kept", type=float, nargs="+", default=[0.3, 0.1],
                    help="per-layer share of output channels kept (the last layer keeps all)")
    ap.add_argument("--epochs", type=int, default=3)  # the stored results and docs use 3
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = sparsesearch.load_dataset(args.data, seed=0)
    torch.manual_seed(0)
    if args.model == "bn-cnn":
        dense = bn_cnn()
    else:
        dense = sparsesearch.build_model(args.model, num_classes=10,
                                         input_shape=tuple(splits.train[0][0].shape))
    fit(dense, splits.train, epochs=1, lr=1e-3, optimizer="adamw", seed=0)
    names = [layer.name for layer in find_layers(dense)][:-1]
    rows = []
    for kept in args.kept:
        settings = RetrainSettings(lr=1e-3, optimizer="adamw", epochs=args.epochs, warmup=0.05)
        recipe = Recipe(strategy="l1-filter", granularity="channel",
                        sparsity={n: 1.0 - kept for n in names}, retrain=settings)
        small = replay(dense, recipe, splits, retrain=False).model
        small = compact(small, example_input=_example(splits, "cpu")).model
        fit_kw = dict(epochs=settings.epochs, lr=settings.lr, optimizer=settings.optimizer,
                      warmup=settings.warmup, batch_size=settings.batch_size, seed=0,
                      val_data=splits.val)
        times: dict[str, list[float]] = {"replay": [], "masked": [], "compacted fit": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            times["replay"].append(_cpu(lambda: replay(dense, recipe, splits)))
            times["masked"].append(_cpu(lambda: replay(dense, recipe, splits, compacted=False)))
            times["compacted fit"].append(_cpu(lambda: fit(copy.deepcopy(small), splits.train, **fit_kw)))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "model": args.model, "data": args.data, "kept_channels": kept, "epochs": args.epochs,
            "dense_params": sum(p.numel() for p in dense.parameters()),
            "compacted_params": sum(p.numel() for p in small.parameters()),
            "cpu_s": med, "replay_over_compacted_fit": med["replay"] / med["compacted fit"],
            "masked_over_compacted_fit": med["masked"] / med["compacted fit"],
        }
        rows.append(row)
        print(f"{args.model} {args.data} kept {kept:.0%} of channels: {row['compacted_params']:,} of "
              f"{row['dense_params']:,} params; CPU s (median of {args.repeats}) replay {med['replay']:.2f}, "
              f"masked {med['masked']:.2f}, compacted fit {med['compacted fit']:.2f}; "
              f"replay/compacted fit {row['replay_over_compacted_fit']:.2f}, "
              f"masked/compacted fit {row['masked_over_compacted_fit']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old[f"{args.model}/{args.data}"] = {"rows": rows, "torch": torch.__version__,
                                        "machine": C.machine()}
    RESULTS.write_text(json.dumps(old, indent=2) + "\n")
    MARKDOWN.write_text(markdown(old))


def markdown(results: dict) -> str:
    out = ["## Channel trials train the compacted model (benchmarks/channel_trial_cost.py)", "",
           "A channel trial fine-tunes its compacted model (issue 12, item 5). CPU seconds, median of",
           "interleaved runs, 1 thread, AdamW, `l1-filter` keeping the same share of every layer's output",
           "channels (`bn-cnn`: 4 conv + BatchNorm, Flatten → Linear head), against `fit` with the same",
           "settings run directly on the compacted model (the floor):", "",
           "| model / data | channels kept | epochs | params kept | replay (a search trial) "
           "| masked full-size (before) | fit on the compacted model | replay / compacted fit |",
           "|---|---|---|---|---|---|---|---|"]
    for key, entry in results.items():
        for r in entry["rows"]:
            t = r["cpu_s"]
            out.append(f"| {key} | {r['kept_channels']:.0%} | {r['epochs']} | {r['compacted_params']:,} of "
                       f"{r['dense_params']:,} | {t['replay']:.2f} | {t['masked']:.2f} | "
                       f"{t['compacted fit']:.2f} | **{r['replay_over_compacted_fit']:.2f}** |")
    out += ["", "The replay's extra over the floor is the scoring, the compaction and its checks, and the",
            "copy back into the full-size model. Command: `python benchmarks/channel_trial_cost.py --epochs 3`",
            "(raw: `benchmarks/results/channel_trial_cost.json`). Seconds depend on the machine's load; the",
            "ratios are what is measured."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
