"""Recipes: everything needed to replay one pruned model from its dense starting point.

A recipe is plain JSON (``Recipe.to_json`` / ``Recipe.from_json``)::

    {"format": "sparsesearch.recipe/1", "strategy": "magnitude", "granularity": "weight",
     "sparsity": {"fc1": 0.99, ...}, "retrain": {"lr": 0.05, "epochs": 3, ...},
     "seed": 123, "data_seed": 0, "score": {"num_batches": 8, "seed": 0}, "strategy_params": {},
     "budget_params": 4312, "params": 4310, "total_params": 431080}

:func:`apply_recipe` prunes a dense model at exactly those per-layer amounts, with the same
strategy scores, prune steps and fine-tuning, and returns the pruned model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sparsesearch.data import as_splits
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.prune import apply_sparsity
from sparsesearch.plugins import get_strategy
from sparsesearch.score import DEFAULT_GRADIENT_BATCHES, compute_scores
from sparsesearch.train import fit

__all__ = ["FORMAT", "Recipe", "Replay", "RetrainSettings", "apply_recipe", "load_recipe", "replay"]

SCHEDULES = ("steps", "gradual")

FORMAT = "sparsesearch.recipe/1"


@dataclasses.dataclass(frozen=True)
class RetrainSettings:
    """Fine-tuning after pruning. ``prune_steps`` = k rounds of prune + retrain (1 = one-shot);
    ``kd_weight`` > 0 distils from the dense model at ``kd_temperature``.

    ``schedule`` says how the k rounds are spent: ``"steps"`` (each round its own learning-rate
    cycle: intermediate rounds one epoch, the last the rest) or ``"gradual"`` (Zhu & Gupta: one
    warm-up + cosine schedule over all ``epochs``; the k prune events, on the cubic schedule,
    are spread evenly over the first ``prune_window`` share of the epochs). ``warmup`` is the
    share of optimizer steps with a linear learning-rate warm-up.
    """

    lr: float = 0.05
    epochs: int = 3
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 128
    prune_steps: int = 1
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    schedule: str = "steps"
    prune_window: float = 0.5
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise SparsesearchError(f"schedule must be one of {SCHEDULES}, got schedule={self.schedule!r}")
        if not 0.0 < self.prune_window <= 1.0:
            raise SparsesearchError(f"prune_window must be in (0, 1], got prune_window={self.prune_window!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise SparsesearchError(f"warmup must be in [0, 1), got warmup={self.warmup!r}")
        if not self.lr > 0:
            raise SparsesearchError(f"lr must be > 0, got lr={self.lr!r}")
        if self.epochs < 0:
            raise SparsesearchError(f"epochs must be >= 0, got epochs={self.epochs!r}")
        if self.prune_steps < 1:
            raise SparsesearchError(f"prune_steps must be >= 1, got prune_steps={self.prune_steps!r}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise SparsesearchError(f"kd_weight must be in [0, 1], got kd_weight={self.kd_weight!r}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    strategy: str
    sparsity: dict[str, float]
    retrain: RetrainSettings = RetrainSettings()
    seed: int = 0
    data_seed: int = 0
    granularity: str = "weight"
    score: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"num_batches": DEFAULT_GRADIENT_BATCHES, "seed": 0}
    )
    strategy_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget_params: int | None = None
    params: int | None = None
    total_params: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d = {"format": FORMAT, **d}
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        d = dict(d)
        fmt = d.pop("format", FORMAT)
        if fmt != FORMAT:
            raise SparsesearchError(f"unsupported recipe format {fmt!r}; expected {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SparsesearchError(f"unknown recipe key {unknown[0]!r}")
        d["retrain"] = RetrainSettings(**d.get("retrain", {}))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SparsesearchError(f"recipe is not valid JSON: {exc}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe JSON file."""
    return Recipe.from_json(Path(path).read_text())


def step_amounts(final: Mapping[str, float], steps: int) -> list[dict[str, float]]:
    """Per-step amounts reaching ``final`` over ``steps`` rounds (Zhu & Gupta's cubic schedule);
    the last step is exactly ``final``."""
    out = []
    for i in range(1, steps + 1):
        frac = 1.0 - (1.0 - i / steps) ** 3
        out.append({n: (a if i == steps else a * frac) for n, a in final.items()})
    return out


def split_epochs(epochs: int, steps: int) -> list[int]:
    """Fine-tuning epochs per prune step: intermediate steps get one epoch each (at least),
    the final step the rest."""
    if steps == 1:
        return [epochs]
    inter = [1] * (steps - 1)
    return inter + [max(epochs - (steps - 1), 1 if epochs > 0 else 0)]


def prune_epochs(epochs: int, steps: int, window: float) -> list[int]:
    """Epochs (0-based, before which) the ``steps`` prune events of a gradual schedule happen:
    evenly over the first ``window`` share of ``epochs``, the first at epoch 0."""
    if steps == 1 or epochs <= 1:
        return [0] * steps
    span = max(1.0, window * epochs)
    return [min(int(i * span / steps), epochs - 1) for i in range(steps)]


def _example(splits: Any, device: Any) -> torch.Tensor:
    """A couple of training inputs, to trace the model with."""
    x = splits.train[0][0]
    x2 = splits.train[min(1, len(splits.train) - 1)][0]
    return torch.stack([x, x2]).to(device)


@dataclasses.dataclass
class Replay:
    """What :func:`replay` did: the pruned ``model`` (masks on), the validation accuracy after
    each fine-tuning epoch (``history``, when validation ran) and the ``epochs`` trained."""

    model: nn.Module
    history: list[float]
    epochs: int


def apply_recipe(
    model: nn.Module, recipe: "Recipe | Mapping[str, Any] | str | Path", data: Any, **options: Any,
) -> nn.Module:
    """Replay ``recipe`` on ``model`` (the dense starting point) and return the pruned model.

    ``data`` is a dataset name, a :class:`sparsesearch.data.Splits` or a ``(train, val[, test])``
    tuple. The keyword options are :func:`replay`'s (``device``, ``scores``, ``teacher``,
    ``on_epoch``, ``on_masked``, ``retrain``, ``inplace``). Masks stay on the returned model;
    call :func:`sparsesearch.make_permanent` to bake them in. :func:`replay` does the same and
    also returns the fit history.
    """
    return replay(model, recipe, data, **options).model


def replay(
    model: nn.Module,
    recipe: "Recipe | Mapping[str, Any] | str | Path",
    data: Any,
    *,
    device: str | torch.device = "cpu",
    scores: Mapping[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_masked: Callable[[nn.Module, bool], None] | None = None,
    retrain: bool = True,
    inplace: bool = False,
) -> Replay:
    """Replay ``recipe`` on ``model`` (the dense starting point): a :class:`Replay` (the pruned
    model, per-epoch validation accuracy, epochs trained).

    ``scores`` are the strategy's scores of the dense model when already computed (the search
    passes its per-study cache). With ``retrain=False`` only the masks are applied (one step,
    the final amounts). ``on_masked(model, final)`` is called after each prune step's masks are
    applied, before its fine-tuning (the search checks structured counts there).
    ``on_epoch(epoch, val_accuracy)`` may raise to stop training (the search's pruner does);
    epochs are counted from 0 over the whole recipe. A copy of ``model`` is pruned unless
    ``inplace``."""
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, Mapping):
        recipe = Recipe.from_dict(recipe)
    info = get_strategy(recipe.strategy)
    strategy = info.strategy
    if strategy.granularity != recipe.granularity:
        raise SparsesearchError(
            f"recipe says granularity {recipe.granularity!r} but strategy {recipe.strategy!r} "
            f"is {strategy.granularity!r}"
        )
    splits = as_splits(data, seed=recipe.data_seed)
    work = model if inplace else copy.deepcopy(model)
    work.to(device)
    if teacher is None and recipe.retrain.kd_weight > 0:
        teacher = copy.deepcopy(model).to(device).eval()
    layers = find_layers(work)
    missing = sorted(set(recipe.sparsity) - {layer.name for layer in layers})
    if missing:
        raise SparsesearchError(f"recipe names layer {missing[0]!r}, which the model lacks")
    amounts = {layer.name: float(recipe.sparsity.get(layer.name, 0.0)) for layer in layers}
    rt = recipe.retrain
    steps = rt.prune_steps if retrain else 1
    score_kw = dict(
        data=splits.train, seed=int(recipe.score.get("seed", 0)),
        num_batches=int(recipe.score.get("num_batches", DEFAULT_GRADIENT_BATCHES)),
        batch_size=rt.batch_size, device=device, params=recipe.strategy_params,
    )
    example = _example(splits, device)
    history: list[float] = []
    trained = [0]

    def mask_step(step: int, step_amount: Mapping[str, float]) -> None:
        if step == 0 and scores is not None:
            step_scores = scores
        else:  # prune steps after the first score the current (fine-tuned) model
            step_scores = compute_scores(work, layers, strategy, **score_kw)
        apply_sparsity(layers, step_scores, step_amount, strategy.granularity, model=work, example_input=example)
        if on_masked is not None:
            on_masked(work, step == steps - 1)

    def fit_kw() -> dict[str, Any]:
        return dict(
            lr=rt.lr, optimizer=rt.optimizer, weight_decay=rt.weight_decay, momentum=rt.momentum,
            batch_size=rt.batch_size, device=device, teacher=teacher, kd_weight=rt.kd_weight,
            kd_temperature=rt.kd_temperature, warmup=rt.warmup,
        )

    plan = step_amounts(amounts, steps)
    if not retrain or rt.epochs == 0:
        for step, step_amount in enumerate(plan):
            mask_step(step, step_amount)
        return Replay(work, history, 0)

    if rt.schedule == "gradual":
        # several events on one epoch (more steps than epochs): the last of them is applied
        by_epoch: dict[int, int] = {}
        for step, e in enumerate(prune_epochs(rt.epochs, steps, rt.prune_window)):
            by_epoch[e] = step

        def before(epoch: int) -> None:
            if epoch in by_epoch:
                mask_step(by_epoch[epoch], plan[by_epoch[epoch]])

        def report(epoch: int, acc: float) -> None:
            trained[0] = epoch + 1
            history.append(acc)
            if on_epoch is not None:
                on_epoch(epoch, acc)

        fit(work, splits.train, epochs=rt.epochs, seed=recipe.seed, val_data=splits.val,
            on_epoch=report, before_epoch=before, **fit_kw())
        return Replay(work, history, trained[0])

    epoch_offset = 0
    for step, (step_amount, epochs) in enumerate(zip(plan, split_epochs(rt.epochs, steps))):
        mask_step(step, step_amount)
        if epochs == 0:
            continue
        final = step == steps - 1

        def report(epoch: int, acc: float, _offset: int = epoch_offset) -> None:
            trained[0] = _offset + epoch + 1
            history.append(acc)
            if on_epoch is not None:
                on_epoch(_offset + epoch, acc)

        fit(
            work, splits.train, epochs=epochs, seed=recipe.seed + step,
            val_data=splits.val if (final or on_epoch is not None) else None,
            on_epoch=report, **fit_kw(),
        )
        epoch_offset += epochs
        trained[0] = epoch_offset
    return Replay(work, history, trained[0])
