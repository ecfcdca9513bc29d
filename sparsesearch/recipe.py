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
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sparsesearch.compact import CompactionWarning, compact
from sparsesearch.data import as_splits
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.prune import apply_sparsity, ensure_graph
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
    each fine-tuning epoch (``history``, when validation ran) and the ``epochs`` trained;
    ``compacted`` is the compacted model that trained (channel strategies, see :func:`replay`),
    computing what ``model`` computes."""

    model: nn.Module
    history: list[float]
    epochs: int
    compacted: nn.Module | None = None


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
    compacted: bool | None = None,
) -> Replay:
    """Replay ``recipe`` on ``model`` (the dense starting point): a :class:`Replay` (the pruned
    model, per-epoch validation accuracy, epochs trained).

    ``scores`` are the strategy's scores of the dense model when already computed (the search
    passes its per-study cache). With ``retrain=False`` only the masks are applied (one step,
    the final amounts). ``on_masked(model, final)`` is called after each prune step's masks are
    applied, before its fine-tuning (the search checks structured counts there).
    ``on_epoch(epoch, val_accuracy)`` may raise to stop training (the search's pruner does);
    epochs are counted from 0 over the whole recipe. A copy of ``model`` is pruned unless
    ``inplace``.

    Channel strategies train the **compacted** model (``compacted``, default True for them):
    once the final masks are on, the pruned channels are removed for real
    (:func:`sparsesearch.compact.compact`, equivalence checked) and fine-tuning goes on with the
    smaller model, so a channel trial costs what its size says. Before that (the earlier rounds
    of ``"steps"``, the prune window of ``"gradual"``, where the optimizer restarts at the
    hand-over) the masked full-size model trains, since each prune event scores it. The trained
    weights then go back into the masked full-size model (checked to compute the same), so the
    returned ``model`` is of the original class and shapes as always, and
    ``Replay.compacted`` is the small one. A model that cannot be compacted trains masked."""
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
    if strategy.granularity == "channel":  # tied channels as the search planned them, and a
        ensure_graph(work, layers, example)  # context that shows the graph to score()
    history: list[float] = []
    trained = [0]
    if compacted is None:
        compacted = strategy.granularity == "channel"
    elif compacted and strategy.granularity != "channel":
        raise SparsesearchError(
            f"compacted=True needs a channel strategy; {recipe.strategy!r} is {strategy.granularity!r}"
        )
    shrunk: list[_Compacted] = []  # the final step's compacted model, when it trains

    def mask_step(step: int, step_amount: Mapping[str, float]) -> nn.Module:
        if step == 0 and scores is not None:
            step_scores = scores
        else:  # prune steps after the first score the current (fine-tuned) model
            step_scores = compute_scores(work, layers, strategy, **score_kw)
        apply_sparsity(layers, step_scores, step_amount, strategy.granularity, model=work, example_input=example)
        final = step == steps - 1
        if on_masked is not None:
            on_masked(work, final)
        if final and compacted and retrain and rt.epochs > 0:
            shrunk.append(_Compacted(work, example))
            if shrunk[0].model is not None:
                return shrunk[0].model
        return work

    def done(epochs: int) -> Replay:
        small = shrunk[0].model if shrunk else None
        if small is not None:
            shrunk[0].finish(small)
        return Replay(work, history, epochs, small)

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
        return done(0)

    if rt.schedule == "gradual":
        # several events on one epoch (more steps than epochs): the last of them is applied
        by_epoch: dict[int, int] = {}
        for step, e in enumerate(prune_epochs(rt.epochs, steps, rt.prune_window)):
            by_epoch[e] = step

        def before(epoch: int) -> nn.Module | None:
            if epoch in by_epoch:
                return mask_step(by_epoch[epoch], plan[by_epoch[epoch]])
            return None

        def report(epoch: int, acc: float) -> None:
            trained[0] = epoch + 1
            history.append(acc)
            if on_epoch is not None:
                on_epoch(epoch, acc)

        fit(work, splits.train, epochs=rt.epochs, seed=recipe.seed, val_data=splits.val,
            on_epoch=report, before_epoch=before, **fit_kw())
        return done(trained[0])

    epoch_offset = 0
    for step, (step_amount, epochs) in enumerate(zip(plan, split_epochs(rt.epochs, steps))):
        current = mask_step(step, step_amount)
        if epochs == 0:
            continue
        final = step == steps - 1

        def report(epoch: int, acc: float, _offset: int = epoch_offset) -> None:
            trained[0] = _offset + epoch + 1
            history.append(acc)
            if on_epoch is not None:
                on_epoch(_offset + epoch, acc)

        fit(
            current, splits.train, epochs=epochs, seed=recipe.seed + step,
            val_data=splits.val if (final or on_epoch is not None) else None,
            on_epoch=report, **fit_kw(),
        )
        epoch_offset += epochs
        trained[0] = epoch_offset
    return done(trained[0])


class _Compacted:
    """A masked channel model and its compacted copy, with the index map between their tensors,
    so the compacted model can train and its weights go back into the full-size one.

    Compaction only slices tensors (no folding), so each tensor of the compacted model is a
    gather of its full-size namesake. The map is read off a probe: a float64 copy of the masked
    model whose tensors hold their own flat index (times a power of two, so exactly), compacted
    the same way; the map is then checked by expanding the untrained compacted model and
    comparing it with the masked model."""

    _SCALE = 2.0 ** -40  # codes are integers times this: exact in float64, small in a forward

    def __init__(self, masked: nn.Module, example: torch.Tensor) -> None:
        self.masked = masked
        self.example = example
        self.model: nn.Module | None = None
        self.maps: dict[str, torch.Tensor] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompactionWarning)
            res = compact(masked, example_input=example)
            if res.fallback or res.model is masked:
                return
            maps = self._index_maps(res.model)
        if maps is None:
            return
        self.maps = maps
        check = copy.deepcopy(masked)
        self.expand(res.model, into=check)
        if not self._same(check, masked):
            return
        res.model.train(masked.training)
        self.model = res.model

    def _index_maps(self, small: nn.Module) -> dict[str, torch.Tensor] | None:
        probe = copy.deepcopy(self.masked).to("cpu", torch.float64)
        coded: list[str] = []
        with torch.no_grad():
            for key, t in probe.state_dict().items():
                if t.is_floating_point() and not key.endswith(".mask"):
                    t.copy_((torch.arange(t.numel(), dtype=torch.float64) + 1).view_as(t) * self._SCALE)
                    coded.append(key)
        res = compact(probe, example_input=self.example.detach().to("cpu", torch.float64), check=False)
        got, want = _tensors(res.model), _tensors(small)
        if res.fallback or set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
            return None  # the probe was compacted differently: no map
        full = _tensors(probe)
        maps = {}
        for key in map(_canonical, coded):
            idx = torch.round(got[key].reshape(-1) / self._SCALE).to(torch.long) - 1
            if bool((idx >= full[key].numel()).any()):
                return None
            maps[key] = idx
        return maps

    def expand(self, small: nn.Module, *, into: nn.Module) -> None:
        """Write ``small``'s tensors into the full-size ``into`` (in place): every mapped entry
        from ``small``, zero where a channel was removed; masks stay ``into``'s own."""
        dst, src = _tensors(into), _tensors(small)
        with torch.no_grad():
            for key, value in src.items():
                if key in self.maps:
                    idx = self.maps[key]
                    keep = idx >= 0
                    full = torch.zeros(dst[key].numel(), dtype=dst[key].dtype, device=dst[key].device)
                    full[idx[keep].to(full.device)] = value.reshape(-1)[keep.to(value.device)].to(full)
                    dst[key].copy_(full.view_as(dst[key]))
                elif dst[key].shape == value.shape:
                    dst[key].copy_(value)

    def _same(self, a: nn.Module, b: nn.Module) -> bool:
        was_a, was_b = a.training, b.training
        a.eval()
        b.eval()
        try:
            with torch.no_grad():
                ya, yb = a(self.example), b(self.example)
        finally:
            a.train(was_a)
            b.train(was_b)
        if not (isinstance(ya, torch.Tensor) and isinstance(yb, torch.Tensor)) or ya.shape != yb.shape:
            return False
        return bool(torch.allclose(ya, yb, rtol=1e-4, atol=1e-5 * max(1.0, float(yb.abs().max()))))

    def finish(self, trained: nn.Module) -> None:
        """Put the trained compacted model's weights into the masked full-size model, checked."""
        self.expand(trained, into=self.masked)
        if not self._same(self.masked, trained):
            raise RuntimeError("the trained compacted model and its full-size copy differ; "
                               "this is a bug in sparsesearch, please report it")


def _canonical(key: str) -> str:
    """A state_dict key without the mask parametrization: ``conv.parametrizations.weight.original``
    and ``conv.weight`` both name ``conv.weight``."""
    return key.replace(".parametrizations.", ".").removesuffix(".original")


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict tensors (sharing storage) under canonical names, masks left out."""
    return {_canonical(k): v for k, v in model.state_dict().items() if not k.endswith(".mask")}
