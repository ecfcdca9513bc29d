"""The Optuna study: per-layer sparsity and retrain settings under a hard parameter budget.

Per trial: choose a strategy, sample relative per-layer densities, project them onto the
budget (met before any training), mask at the exact amounts, fine-tune with per-epoch
validation reports (pruned by Optuna's pruner), record. The first trials are the heuristic
allocations (uniform, global, LAMP, ERK) at a few learning rates, so the search starts from
what users would do instead and its best value is never below theirs on validation.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import torch
from filelock import FileLock
from torch import nn

from sparsesearch import plugins, record
from sparsesearch._optuna import quiet_optuna
from sparsesearch.budget import HEURISTICS, BudgetPlan, count_params, plan_budget
from sparsesearch.compact import compact
from sparsesearch.data import as_splits
from sparsesearch.errors import BudgetError, NoCompleteTrialError, SparsesearchError
from sparsesearch.fidelity import (
    ComputeBudget, auto_dense_epochs, choose_final, close_to_best, epochs_spent, fastest, screen_ranking,
)
from sparsesearch.latency import LatencySettings, latency_ratios
from sparsesearch.layers import find_layers
from sparsesearch.macs import count_macs
from sparsesearch.masks import make_permanent
from sparsesearch.models import build_model, load_checkpoint
from sparsesearch.options import option
from sparsesearch.runner import cached_tensors, create_study_once, requeue_interrupted, run_study, setup_owner
from sparsesearch.sampler import LocalTPESampler
from sparsesearch.recipe import Recipe, RetrainSettings, _example, apply_recipe, replay
from sparsesearch.score import DEFAULT_GRADIENT_BATCHES, compute_scores
from sparsesearch.space import SearchSpace
from sparsesearch.storage import make_storage, mask_url, run_folder
from sparsesearch.train import evaluate, evaluate_loss, resolve_device, train_dense

__all__ = ["DenseSettings", "SearchResult", "search", "mask_url", "best_trial", "prepare_dense_model",
           "study_result"]

log = logging.getLogger("sparsesearch")

DENSITY_LOW = 1e-3  # smallest relative density a trial can sample for a layer


@dataclasses.dataclass(frozen=True)
class DenseSettings:
    """How the dense model is trained when it is not given trained (cached per study).
    ``epochs=None``: :func:`sparsesearch.fidelity.auto_dense_epochs` (at least 15 epochs and
    300 optimizer steps)."""

    epochs: int | None = option(None, kind="int>=0", doc=(
        "dense training epochs (default: at least 15 and 300 optimizer steps)"))
    lr: float = option(1e-3, kind="number>0", doc="dense training learning rate (default 1e-3)")
    optimizer: str = option("adamw", kind="choice:sgd,adamw", doc="dense training optimizer (default 'adamw')")
    weight_decay: float = option(0.01, kind="number>=0", doc="dense training weight decay (default 0.01)")
    batch_size: int = option(128, kind="int>=1", doc="dense training batch size (default 128)")

    def resolved_epochs(self, n_train: int) -> int:
        return self.epochs if self.epochs is not None else auto_dense_epochs(n_train, self.batch_size)


@dataclasses.dataclass
class SearchResult:
    """What :func:`search` returns.

    ``model`` is the best trial's pruned model with masks made permanent; ``recipe`` replays
    it with :func:`sparsesearch.apply_recipe` from ``dense_model``.
    """

    study: optuna.Study
    best_trial: optuna.trial.FrozenTrial
    model: nn.Module
    recipe: Recipe
    dense_model: nn.Module
    val_accuracy: float
    test_accuracy: float | None
    dense_val_accuracy: float
    dense_test_accuracy: float | None
    params: int
    total_params: int
    budget_params: int
    pareto_front: list[optuna.trial.FrozenTrial] = dataclasses.field(default_factory=list)
    budget_metric: str = "params"  # with "macs", budget_params is a MAC budget per sample
    epochs_trained: int = 0  # fine-tuning epochs of the whole study (finalists included)
    compute_budget: float = 0.0  # the study's fine-tuning compute budget, in epochs

    @property
    def compression(self) -> float:
        return self.total_params / max(self.params, 1)

    @property
    def latency(self) -> float | None:
        """The chosen model's measured latency over the dense model's (a latency-preferring
        study, see :class:`sparsesearch.LatencySettings`), else ``None``."""
        v = self.best_trial.user_attrs.get(record.LATENCY)
        return float(v) if isinstance(v, (int, float)) else None

    def summary(self) -> str:
        t = "n/a" if self.test_accuracy is None else f"{self.test_accuracy:.4f}"
        attrs = self.best_trial.user_attrs
        what = self.recipe.strategy + (f", {attrs['heuristic']}" if attrs.get("heuristic") else "")
        if attrs.get(record.PHASE) == record.FINAL:
            what += f", finalist of #{attrs.get(record.FINALIST_OF)}"
        if self.budget_metric == "macs":
            total = self.study.user_attrs.get(record.TOTAL_MACS, 0)
            size = (f"MACs {attrs.get(record.MACS, '?')}/{total} per sample (budget {self.budget_params} "
                    f"MACs); params {self.params}/{self.total_params}")
        else:
            size = (f"params {self.params}/{self.total_params} ({self.compression:.1f}x; budget "
                    f"{self.budget_params})")
        if self.latency is not None:
            batch = self.study.user_attrs.get(record.SETTINGS, {}).get("latency", {}).get("batch", "?")
            size += f"; latency {self.latency:.2f}x dense (batch {batch}, measured)"
        return (
            f"best trial #{self.best_trial.number} ({what}): val {self.val_accuracy:.4f}, test {t}, "
            f"{size}; dense val {self.dense_val_accuracy:.4f}; fine-tuning epochs "
            f"{self.epochs_trained}/{self.compute_budget:g}"
        )


def _resolve_model(
    model: nn.Module | str, splits: Any, model_kwargs: Mapping[str, Any], seed: int = 0
) -> tuple[nn.Module, bool]:
    if isinstance(model, nn.Module):
        return model, False
    if isinstance(model, str):
        kwargs = dict(model_kwargs)
        kwargs.setdefault("num_classes", splits.num_classes)
        kwargs.setdefault("input_shape", tuple(splits.input_shape))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same seed gives the same initial weights
            return build_model(model, **kwargs), True
    raise SparsesearchError(f"model must be an nn.Module or a model name, got {type(model).__name__}")


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def _state_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _near_chance(num_classes: int) -> float:
    """The validation accuracy up to which a model counts as untrained (at chance): twice the
    chance level (a random initialisation of a 10-class model often scores 10-18 %), at most
    halfway between chance and 1 (binary: 0.75)."""
    c = max(int(num_classes), 2)
    return min(2.0 / c, 0.5 + 0.5 / c)


def _prepare_dense(
    model: nn.Module, *, built: bool, trained: bool | None, splits: Any, dense: DenseSettings,
    seed: int, device: torch.device, cache_dir: Path | None, data_key: str, label: str | None = None,
) -> nn.Module:
    model = model.to(device)
    dense = dataclasses.replace(dense, epochs=dense.resolved_epochs(len(splits.train)))
    if trained is None:
        if built:
            trained = False
        else:
            acc = evaluate(model, splits.val, device=device)
            trained = acc > _near_chance(splits.num_classes)
            if not trained:
                log.info("the given model is at chance on validation (%.3f): training it first", acc)
    if trained:
        return model
    torch.manual_seed(seed)
    cache_path = None
    if cache_dir is not None:
        key = _fingerprint(type(model).__name__, str(model), _state_fingerprint(model), data_key, seed, dense)
        cache_path = cache_dir / f"dense-{key}.pt"
    if cache_path is not None and cache_path.is_file():
        log.info("dense model: loading the cached %s", cache_path)

    def say_training() -> None:  # in the one worker that trains it (the others load the cache)
        log.info("dense model: training %s for %d epochs%s", label or type(model).__name__, dense.epochs,
                 f" (cached as {cache_path})" if cache_path is not None else "")

    return train_dense(
        model, splits, epochs=dense.epochs, lr=dense.lr, optimizer=dense.optimizer,
        batch_size=dense.batch_size, seed=seed, device=device, cache_path=cache_path,
        weight_decay=dense.weight_decay, on_train=say_training,
    )


class _NarrowedTrial:
    """The trial a plugin's ``sparsesearch_suggest_params`` sees when the user fixed or narrowed
    its hyperparameters (``strategy_params``): a number fixes one, ``[low, high]`` narrows a
    numeric range, a list of choices narrows a categorical; everything else is the trial's."""

    def __init__(self, trial: optuna.Trial, strategy: str, overrides: Mapping[str, Any]) -> None:
        self._trial, self._strategy, self._over = trial, strategy, dict(overrides)
        self.asked: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def _range(self, name: str, low: Any, high: Any) -> tuple[Any, Any] | Any:
        value = self._over[name]
        if isinstance(value, (list, tuple)):
            lo, hi = value
            if lo < low or hi > high or lo > hi:
                raise SparsesearchError(
                    f"strategy_params.{self._strategy}.{name} = {list(value)} is outside the "
                    f"strategy's range [{low}, {high}]")
            return lo, hi
        if not low <= value <= high:
            raise SparsesearchError(
                f"strategy_params.{self._strategy}.{name} = {value!r} is outside the strategy's "
                f"range [{low}, {high}]")
        return value

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        self.asked.add(name)
        if name not in self._over:
            return self._trial.suggest_float(name, low, high, **kw)
        r = self._range(name, low, high)
        return float(r) if not isinstance(r, tuple) else self._trial.suggest_float(name, r[0], r[1], **kw)

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        self.asked.add(name)
        if name not in self._over:
            return self._trial.suggest_int(name, low, high, **kw)
        r = self._range(name, low, high)
        return int(r) if not isinstance(r, tuple) else self._trial.suggest_int(name, int(r[0]), int(r[1]), **kw)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.asked.add(name)
        if name not in self._over:
            return self._trial.suggest_categorical(name, choices)
        value = self._over[name]
        wanted = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in wanted if v not in choices]
        if bad:
            raise SparsesearchError(
                f"strategy_params.{self._strategy}.{name}: {bad[0]!r} is not one of the strategy's "
                f"choices {list(choices)}")
        return wanted[0] if len(wanted) == 1 else self._trial.suggest_categorical(name, wanted)


def _strategy_params(trial: optuna.Trial, strategy: str, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The plugins' hyperparameters for ``strategy`` in this trial, as the user fixed or
    narrowed them; an override the strategy never asks for is a user error naming it."""
    mine = overrides.get(strategy)
    if not mine:
        return plugins.suggest_strategy_params(strategy, trial)
    proxy = _NarrowedTrial(trial, strategy, mine)
    params = plugins.suggest_strategy_params(strategy, proxy)
    unknown = sorted(set(mine) - proxy.asked)
    if unknown:
        raise SparsesearchError(
            f"strategy_params.{strategy}.{unknown[0]}: strategy {strategy!r} has no such "
            f"hyperparameter (it asks for: {', '.join(sorted(proxy.asked)) or 'none'})")
    return params


@dataclasses.dataclass(eq=False)
class _Objective:
    """One trial: allocate (budget met by construction), mask, fine-tune, record."""

    strategies: list[str]
    plans: dict[str, BudgetPlan]
    space: SearchSpace
    compute: ComputeBudget
    heuristics: list[str]
    seed: int
    dense: nn.Module
    splits: Any
    device: torch.device
    teacher: nn.Module
    num_batches: int
    multi_objective: bool
    strategy_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    budget_range: tuple[int, int] | None = None  # a pareto study's per-trial budgets (units)
    score_dir: Path | None = None
    score_key: Any = None
    score_cache: dict[Any, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)
    latency: LatencySettings | None = None  # time each compacted model (a latency-preferring study)
    latency_cache: dict[Any, float] = dataclasses.field(default_factory=dict)  # shape -> latency
    latency_x: torch.Tensor | None = None  # the timed batch (latency_input)
    heuristic_cache: dict[Any, dict[str, int]] = dataclasses.field(default_factory=dict)
    models: dict[int, nn.Module] = dataclasses.field(default_factory=dict)
    best_value: float | None = None
    best_screen: int | None = None  # the screening trial whose model is kept
    # the screening's compute left after this process's last screening trial, by its own
    # count (read by _BudgetStop instead of the study's trials; None: not known)
    screen_left: float | None = None

    def __call__(self, trial: optuna.Trial) -> Any:
        # what the trial records, written in one storage call however it ends (a RUNNING
        # trial shows its parameters and, at most a few seconds late, its intermediate values)
        attrs: dict[str, Any] = {}
        self.screen_left = None
        try:
            value = self._run(trial, attrs)
        except optuna.TrialPruned:
            record.trial_attrs(trial, attrs)
            raise
        except Exception as exc:
            attrs[record.FAIL_REASON] = f"{type(exc).__name__}: {exc}"
            attrs[record.TRACEBACK] = _clip(traceback.format_exc())
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            record.trial_attrs(trial, attrs)
            raise
        except BaseException:  # Ctrl-C, SIGTERM: the runner adds the reason
            record.trial_attrs(trial, attrs)
            raise
        finally:
            if self.screen_left is not None:
                self.screen_left -= int(attrs.get(record.EPOCHS, 0) or 0)
        record.trial_attrs(trial, attrs)
        return value

    # -- allocation -----------------------------------------------------------------------

    def allocate(self, trial: optuna.Trial, plan: BudgetPlan, strategy: str,
                 strategy_params: Mapping[str, Any], scores: Mapping[str, torch.Tensor],
                 heuristic: str | None) -> dict[str, int]:
        """Units kept per layer. In ``family``/``heuristics`` mode the trial's parameters
        (``alloc:heuristic``, ``alloc:temperature``) determine the allocation exactly, seeds
        included; in ``layers`` mode one relative density per layer is projected."""
        mode = self.space.allocation
        if mode == "layers":
            if heuristic:
                keep = self.heuristic_keep(heuristic, strategy, strategy_params, plan, scores)
                for lb in plan.layers:  # the enqueued densities, so the sampler learns from seeds
                    trial.suggest_float(f"density:{lb.name}", DENSITY_LOW, 1.0, log=True)
                return keep
            densities = {
                lb.name: trial.suggest_float(f"density:{lb.name}", DENSITY_LOW, 1.0, log=True)
                for lb in plan.layers
            }
            return plan.project(densities)
        choices = list(self.heuristics)
        h = trial.suggest_categorical("alloc:heuristic", choices) if len(choices) > 1 else choices[0]
        lo, hi = self.space.alloc_temperature
        if mode == "heuristics":
            tau = 1.0
        elif lo < hi:
            tau = trial.suggest_float("alloc:temperature", lo, hi)
        else:
            tau = lo
        return self.family_keep(h, tau, strategy, strategy_params, plan, scores)

    def family_keep(self, heuristic: str, tau: float, strategy: str, params: Mapping[str, Any],
                    plan: BudgetPlan, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """The heuristic's per-layer densities raised to ``tau``, projected onto the budget;
        ``tau == 1`` is the heuristic's own allocation, unchanged."""
        base = self.heuristic_keep(heuristic, strategy, params, plan, scores)
        if tau == 1.0:
            return base
        dens = {lb.name: (max(base[lb.name], 1) / lb.units) ** tau for lb in plan.layers}
        return plan.project(dens)

    def heuristic_keep(self, heuristic: str, strategy: str, params: Mapping[str, Any],
                       plan: BudgetPlan, scores: Mapping[str, torch.Tensor] | None) -> dict[str, int]:
        """A heuristic's allocation, computed once per (heuristic, strategy, params)."""
        key = (heuristic, strategy, plan.granularity, plan.budget_params,
               json.dumps(params, sort_keys=True, default=str))
        if key not in self.heuristic_cache:
            self.heuristic_cache[key] = plan.heuristic(heuristic, scores)
        return dict(self.heuristic_cache[key])

    # -- one trial ------------------------------------------------------------------------

    def _run(self, trial: optuna.Trial, attrs: dict[str, Any]) -> Any:
        """The trial; what it records goes into ``attrs`` (written by :meth:`__call__`)."""
        phase = trial.user_attrs.get(record.PHASE, record.SCREEN)
        screen = phase == record.SCREEN
        # a screening trial reads the study once (the read its sampler made when it was asked
        # for): what other workers did meanwhile
        trials = record.trials_at_ask(trial.study) if screen else []
        if screen and not self.multi_objective and any(
                t.user_attrs.get(record.PHASE) == record.FINAL for t in trials):
            # another worker closed the screening (enqueued the finalists) while this trial
            # was being created
            attrs.update({record.EPOCHS: 0, record.STOP_REASON: "screening closed: the finalists are training"})
            raise optuna.TrialPruned("screening closed")
        heuristic = trial.user_attrs.get(record.HEURISTIC)
        if len(self.strategies) > 1:
            strategy = trial.suggest_categorical("strategy", list(self.strategies))
        else:
            strategy = self.strategies[0]
        strat = plugins.get_strategy(strategy).strategy
        strategy_params = _strategy_params(trial, strategy, self.strategy_overrides)
        plan: BudgetPlan = self.plans[strat.granularity]
        if self.budget_range is not None:  # each trial its own budget: one study, a whole front
            lo, hi = self.budget_range
            plan = dataclasses.replace(plan, budget_params=trial.suggest_int("budget", lo, hi, log=True))
        scores = self.scores_for(strategy, strategy_params)
        keep = self.allocate(trial, plan, strategy, strategy_params, scores, heuristic)
        settings = self.space.suggest(trial)
        settings["schedule"] = "gradual"
        settings["prune_window"] = self.compute.prune_window
        if phase == record.FINAL:
            epochs = self.compute.final_epochs()
            settings["epochs"] = epochs
            settings["prune_steps"] = self.compute.prune_steps_for(epochs)
            settings["lr"] = settings["lr"] * float(trial.user_attrs.get(record.LR_SCALE, 1.0))
            if self.compute.final_kd_weight > 0:
                settings["kd_weight"] = self.compute.final_kd_weight
                settings["kd_temperature"] = self.compute.final_kd_temperature
        expected = plan.params_for(keep)
        trial.set_constraint("budget", float(expected - plan.budget_params))
        sparsity = plan.to_sparsity(keep)
        trial_seed = (self.seed * 100_003 + trial.number) % (2**31 - 1)
        recipe = Recipe(
            strategy=strategy,
            sparsity=sparsity,
            retrain=RetrainSettings(**settings),
            seed=trial_seed,
            data_seed=self.seed,
            granularity=strat.granularity,
            score={"num_batches": self.num_batches, "seed": self.seed},
            strategy_params=strategy_params,
            budget_params=plan.budget_params,
            total_params=plan.total_params,
        )
        attrs.update({
            record.PHASE: phase, record.STRATEGY: strategy, record.HEURISTIC: heuristic,
            record.GRANULARITY: strat.granularity,
            record.SPARSITY: {k: round(v, 8) for k, v in sparsity.items()},
            record.RECIPE: recipe.to_dict(),
        })
        if plan.metric == "params":
            attrs[record.PARAMS] = int(expected)  # the planned count; the measured one replaces it

        max_epochs = settings["epochs"]
        # screening: what is left of its share of the compute when this trial starts
        left = self.compute.screen_epochs - epochs_spent(trials, record.SCREEN) if screen else math.inf
        if screen:
            self.screen_left = left  # less this trial's epochs, once it ends (__call__)
        if left < 1:  # another worker spent the last of it meanwhile
            self._stop(attrs, 0, "compute budget spent")
        done = [0]

        def on_epoch(epoch: int, acc: float) -> None:
            done[0] = epoch + 1
            if not math.isfinite(acc):
                raise SparsesearchError(f"validation accuracy is not finite at epoch {epoch}")
            if self.multi_objective:
                if screen and done[0] < max_epochs and done[0] + 1 > left:
                    self._stop(attrs, done[0], "compute budget spent")
                return
            trial.report(acc, done[0])
            if not screen or done[0] >= max_epochs:
                return
            if done[0] + 1 > left:  # the next epoch would overrun the screening's share
                self._stop(attrs, done[0], "compute budget spent")
            if trial.should_prune():
                attrs[record.PRUNED_AT] = done[0]
                self._stop(attrs, done[0], f"pruned at epoch {done[0]} with val accuracy {acc:.4f}")

        measured: dict[str, int] = {}

        def check_masked(masked: nn.Module, final: bool) -> None:
            # count once, on the final masks: training never un-prunes, so the count holds
            # for the trained model too. Structured models are counted compacted.
            if not final:
                return
            measured["params"], measured["macs"], lat = self.measure(masked, strat.granularity)
            if lat is not None:
                attrs[record.LATENCY] = lat
            value = measured[plan.metric]
            if value > plan.budget_params:
                raise SparsesearchError(
                    f"the {'compacted ' if strat.granularity == 'channel' else ''}model keeps "
                    f"{value} {plan.metric}, over the budget {plan.budget_params}"
                    + (": channels tied by residual additions were kept"
                       if strat.granularity == "channel" else "")
                )

        record.publish(trial)  # its parameters in the storage before its first epoch
        try:
            out = replay(
                self.dense, recipe, self.splits, device=self.device,
                scores=scores, teacher=self.teacher, on_epoch=on_epoch, on_masked=check_masked,
            )
        except BaseException:
            attrs.setdefault(record.EPOCHS, done[0])
            if measured:  # the final masks were on (a pruned trial): what they keep
                attrs[record.PARAMS], attrs[record.MACS] = int(measured["params"]), int(measured["macs"])
            raise
        model = out.model
        counted = measured["params"]
        # the last epoch's validation accuracy is of these very weights
        val = out.history[-1] if out.history else evaluate(model, self.splits.val, device=self.device)
        if not math.isfinite(val):
            raise SparsesearchError("validation accuracy is not finite")
        val_loss = evaluate_loss(model, self.splits.val, device=self.device)
        attrs.update({
            record.PARAMS: int(counted), record.MACS: int(measured["macs"]),
            record.EPOCHS: int(out.epochs), record.VAL_ACCURACY: val,
            record.VAL_LOSS: val_loss if math.isfinite(val_loss) else None,
        })
        self.keep_model(trial.number, phase, val, model)
        if self.multi_objective:
            return val, float(measured[plan.metric])
        return val

    @staticmethod
    def _stop(attrs: dict[str, Any], epochs: int, reason: str) -> None:
        attrs.update({record.EPOCHS: epochs, record.STOP_REASON: reason})
        raise optuna.TrialPruned(reason)

    def keep_model(self, number: int, phase: str, val: float, model: nn.Module) -> None:
        """Trained models kept in memory: every finalist, and the best screening trial."""
        if phase == record.FINAL:
            self.models[number] = model
        elif self.best_value is None or val > self.best_value:
            self.models.pop(self.best_screen, None)
            self.best_value, self.best_screen = val, number
            self.models[number] = model

    def measure(self, model: nn.Module, granularity: str) -> tuple[int, int, float | None]:
        """Parameters counted against the budget, MACs per sample, and (a latency-preferring
        study) the latency over the dense model's. Structured models are counted (and timed)
        compacted (a removed channel is credited with the downstream weights it kills);
        unstructured ones by their non-zero weights."""
        x = _example(self.splits, self.device)
        if granularity != "channel":
            return count_params(model).remaining, count_macs(model, x, nonzero=True), None
        res = _compacted(model, x)
        if res.fallback:
            return count_params(model).remaining, count_macs(model, x), self.latency_of(model)
        return int(res.params_after), count_macs(res.model, x), self.latency_of(res.model)

    def latency_of(self, model: nn.Module) -> float | None:
        """``model``'s latency over the dense model's (None unless the study prefers latency),
        timed once per shape in this process: two trials of one shape record one latency, so
        their order is validation's, not the timing noise's."""
        if self.latency is None:
            return None
        shape = tuple((k, tuple(v.shape), int(v.count_nonzero())) for k, v in model.state_dict().items())
        if shape not in self.latency_cache:
            ratio = latency_ratios({"model": model}, self.dense, self.latency_input(), self.latency)["model"]
            self.latency_cache[shape] = round(ratio, 4)
        return self.latency_cache[shape]

    def latency_input(self) -> torch.Tensor:
        """The timed batch (``latency.batch`` validation inputs), built once per study."""
        assert self.latency is not None
        if self.latency_x is None:
            self.latency_x = self.latency.example(self.splits.val)
        return self.latency_x

    def scores_for(self, strategy: str, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        key = (strategy, json.dumps(params, sort_keys=True, default=str))
        if key not in self.score_cache:
            strat = plugins.get_strategy(strategy).strategy
            layers = find_layers(self.dense)

            def compute() -> dict[str, torch.Tensor]:
                return compute_scores(
                    self.dense, layers, strat, data=self.splits.train, seed=self.seed,
                    num_batches=self.num_batches, batch_size=self.space.batch_size,
                    device=self.device, params=params,
                )

            if self.score_dir is None:
                self.score_cache[key] = compute()
            else:  # computed once per study, shared by its workers (file lock)
                h = _fingerprint(self.score_key, key, self.seed, self.num_batches,
                                 self.space.batch_size, [lay.name for lay in layers],
                                 _strategy_version(strategy))
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in strategy)
                self.score_cache[key] = cached_tensors(Path(self.score_dir) / f"scores-{safe}-{h}.pt", compute)
        return self.score_cache[key]


def _compacted(model: nn.Module, example: torch.Tensor):
    """``compact(model)`` without its warnings (a fallback is read off the result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compact(model, example_input=example)


def _strategy_version(name: str) -> tuple[str, str | None, str]:
    """What identifies a strategy's code in the score cache's key: its distribution and
    version, and a hash of its class's source where Python can read it (a changed ``score()``
    of an unreleased plugin gets fresh scores too)."""
    info = plugins.get_strategy(name)
    try:
        source = inspect.getsource(type(info.strategy))
    except (OSError, TypeError):  # built in C, or defined where the source is gone
        source = type(info.strategy).__qualname__
    return info.distribution, info.version, hashlib.sha256(source.encode()).hexdigest()[:16]


def _clip(text: str, limit: int = 4000) -> str:
    """A long traceback's start (a plugin's own frames come first when chained) and end."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n[...]\n" + text[-half:]


def _make_sampler(seed: int, n_startup: int, local_fraction: float) -> optuna.samplers.BaseSampler:
    return LocalTPESampler(seed=seed, n_startup_trials=n_startup, local_fraction=local_fraction)


def _make_pruner(pruner: str | optuna.pruners.BasePruner | None, n_seeds: int,
                 compute: ComputeBudget, space: SearchSpace) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner in (None, "none"):
        return optuna.pruners.NopPruner()
    if pruner == "halving":
        epochs = space.epochs[1] if isinstance(space.epochs, tuple) else space.epochs
        return compute.pruner(int(epochs))
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(n_seeds, 5), n_warmup_steps=1)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    raise SparsesearchError(f"unknown pruner {pruner!r}; use 'halving', 'median', 'hyperband' or 'none'")


def _as_data(data: Any, seed: int, options: Mapping[str, Any] | None = None):
    return as_splits(data, seed=seed, **dict(options or {}))


def _data_key(data: Any, options: Mapping[str, Any] | None) -> str:
    if not isinstance(data, str):
        return f"{type(data).__name__}:{id(data)}"
    if not options:
        return data
    return data + json.dumps(dict(options), sort_keys=True, default=str)


def _check_fits(model: nn.Module, splits: Any, device: torch.device) -> None:
    """One forward pass on two training samples: a model that does not fit the data is a
    user error (one line), found before any training."""
    x = _example(splits, device)
    try:
        with torch.no_grad():
            was_training = model.training
            model.to(device).eval()
            out = model(x)
            model.train(was_training)
    except Exception as exc:  # noqa: BLE001 - any failure here is a model/data mismatch
        raise SparsesearchError(
            f"model {type(model).__name__} fails on {splits.name!r} inputs of shape "
            f"{tuple(x.shape[1:])}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < splits.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SparsesearchError(
            f"model {type(model).__name__} returns {shape} on {splits.name!r}; expected "
            f"(batch, {splits.num_classes}) class scores"
        )


def _resolve_problem(
    model: nn.Module | str, data: Any, *, seed: int, trained: bool | None,
    model_kwargs: Mapping[str, Any] | None, data_options: Mapping[str, Any] | None,
    checkpoint: str | os.PathLike | None, device: torch.device,
) -> tuple[nn.Module, bool, bool | None, Any]:
    """The model (not trained yet), whether we built it, ``trained`` and the data splits."""
    splits = _as_data(data, seed, data_options)
    net, built = _resolve_model(model, splits, model_kwargs or {}, seed)
    if not built:  # the caller's module stays as it was given (untrained, on its device), so
        try:  # the same call again finds the same study and resumes it
            net = copy.deepcopy(net)
        except Exception as exc:  # noqa: BLE001 - a module that cannot be copied: used itself
            log.warning("the model cannot be copied (%s: %s): it is trained and pruned in place",
                        type(exc).__name__, exc)
    if checkpoint is not None:
        net = load_checkpoint(net, checkpoint)
        trained = True if trained is None else trained
    _check_fits(net, splits, device)
    return net, built, trained, splits


def prepare_dense_model(
    model: nn.Module | str,
    data: Any,
    *,
    seed: int = 0,
    dense: DenseSettings | Mapping[str, Any] | None = None,
    trained: bool | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data_options: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    runs_dir: str | Path = "runs",
    study_name: str = "sparsesearch",
) -> tuple[nn.Module, Any]:
    """The dense model and data splits exactly as :func:`search` prepares them (same seed,
    same dense cache under ``runs_dir/study_name``): ``(dense_model, splits)``. Used to
    replay stored trials (``sparsesearch export``)."""
    dense_settings = DenseSettings(**dense) if isinstance(dense, Mapping) else (dense or DenseSettings())
    torch_device = resolve_device(device)
    net, built, trained, splits = _resolve_problem(
        model, data, seed=seed, trained=trained, model_kwargs=model_kwargs,
        data_options=data_options, checkpoint=checkpoint, device=torch_device,
    )
    return _train_dense(net, built, trained, splits, data, data_options, dense_settings, seed,
                        torch_device, run_folder(runs_dir, study_name), label=_label(model)), splits


def _label(model: Any) -> str:
    """How log lines name the model: its name when given by name, else its class."""
    return model if isinstance(model, str) else type(model).__name__


def _train_dense(net, built, trained, splits, data, data_options, dense_settings, seed, device,
                 run_dir: Path, *, label: str | None = None) -> nn.Module:
    dense_model = _prepare_dense(
        net, built=built, trained=trained, splits=splits, dense=dense_settings, seed=seed,
        device=device, cache_dir=run_dir if isinstance(data, str) else None,
        data_key=_data_key(data, data_options), label=label,
    )
    return dense_model.eval()


def _plan_all(model: nn.Module, infos: Sequence[Any], layers: Sequence[Any], budget: int | float,
              space: SearchSpace, metric: str, example: torch.Tensor) -> dict[str, BudgetPlan]:
    """One budget plan per granularity (the structure only: valid before and after training)."""
    plans: dict[str, BudgetPlan] = {}
    for info in infos:
        g = info.strategy.granularity
        if g not in plans:
            plans[g] = plan_budget(
                model, layers, budget, granularity=g,
                min_sparsity=space.min_sparsity, max_sparsity=space.max_sparsity,
                metric=metric, example_input=example, channel_multiple=space.channel_multiple,
            )
    plan = next(iter(plans.values()))
    if plan.budget_params >= plan.total_params:
        what = "parameters" if metric == "params" else "MACs per sample"
        raise BudgetError(
            f"budget of {plan.budget_params} {what} is not below the model's {plan.total_params}: "
            f"nothing would be pruned; give a smaller budget (an int count, or a fraction < 1)"
        )
    return plans


def _identity(*, model: nn.Module | str, net: nn.Module, data_key: str, budget: int | float,
              budget_metric: str, seed: int, space: SearchSpace, strategies: Sequence[str],
              heuristics: Sequence[str], compute: ComputeBudget, objective: str,
              dense: DenseSettings, include: Any, exclude: Any, trained: bool | None,
              strategy_params: Mapping[str, Any], latency: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What makes a study the same problem: compared on resume, part by part."""
    return {
        "model": model if isinstance(model, str) else f"{type(net).__name__}:{_fingerprint(str(net))}",
        "initial_weights": None if isinstance(model, str) else _state_fingerprint(net),
        "data": data_key, "budget": budget, "budget_metric": budget_metric, "seed": seed,
        "space": space.to_dict(), "strategies": list(strategies), "heuristics": list(heuristics),
        "compute": compute.to_dict(), "objective": objective, "dense": dataclasses.asdict(dense),
        "include": list(include or []), "exclude": list(exclude or []), "trained": trained,
        "strategy_params": dict(strategy_params), "latency": latency,
    }


def _check_identity(storage: Any, study_name: str, identity: Mapping[str, Any]) -> None:
    """Refuse to resume a study of another problem, before any work, naming what differs."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return  # a new study
    stored = storage.get_study_user_attrs(study_id).get(record.IDENTITY)
    if stored is None:
        return  # written by an older sparsesearch: only the budget is compared, below
    stored = _with_new_defaults(stored)
    diff = [k for k in identity if not _same(stored.get(k), identity[k])]
    if diff:
        shown = "; ".join(_difference(k, stored.get(k), identity[k]) for k in diff)
        raise SparsesearchError(
            f"study {study_name!r} holds another problem ({shown}); resume it with the same "
            f"settings, or give another study name"
        )


def _with_new_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored identity with the option tables' fields it lacks at their defaults: a study
    set up before an option existed ran as the option's default (which keeps the old
    behaviour), so adding an option does not refuse the studies made before it."""
    out = dict(stored)
    for key, defaults in (("space", SearchSpace().to_dict()), ("compute", ComputeBudget().to_dict()),
                          ("dense", dataclasses.asdict(DenseSettings()))):
        if isinstance(out.get(key), Mapping):
            out[key] = {**{k: v for k, v in defaults.items() if k not in out[key]}, **out[key]}
    return out


def _difference(key: str, stored: Any, now: Any) -> str:
    """``space.epochs: stored 3, now 4``: the differing entries of two settings tables by
    name (a whole table cut to 80 characters can hide them), else the values themselves."""
    if isinstance(stored, Mapping) and isinstance(now, Mapping):
        keys = sorted(set(stored) | set(now), key=str)
        parts = [f"{key}.{k}: stored {_short(stored.get(k, _MISSING))}, now {_short(now.get(k, _MISSING))}"
                 for k in keys if not _same(stored.get(k, _MISSING), now.get(k, _MISSING))]
        if parts:
            return "; ".join(parts)
    return f"{key}: stored {_short(stored)}, now {_short(now)}"


_MISSING = object()  # a key one of two settings tables lacks


def _same(a: Any, b: Any) -> bool:
    """Equal as stored (JSON, keys sorted): what the study holds against what is asked now."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(not set)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def search(*args: Any, **kwargs: Any) -> "SearchResult":
    # Optuna's INFO lines and ExperimentalWarnings stay out of the user's way; failed trials
    # are logged once, by the objective
    with quiet_optuna(level=logging.ERROR):
        return _search(*args, **kwargs)


def _search(
    model: nn.Module | str,
    data: Any,
    budget: int | float | Sequence[int | float],
    *,
    strategies: Sequence[str] | str = ("magnitude",),
    n_trials: int | None = None,
    timeout: float | None = None,
    compute: ComputeBudget | Mapping[str, Any] | float | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "sparsesearch",
    seed: int = 0,
    space: SearchSpace | Mapping[str, Any] | None = None,
    objective: str = "accuracy",
    device: str = "cpu",
    heuristics: Sequence[str] = HEURISTICS,
    pruner: str | optuna.pruners.BasePruner | None = "halving",
    dense: DenseSettings | Mapping[str, Any] | None = None,
    trained: bool | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    num_batches: int = DEFAULT_GRADIENT_BATCHES,
    runs_dir: str | Path = "runs",
    max_complete: int | None = None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    evaluate_test: bool = True,
    show_progress: bool = False,
    data_options: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    local_fraction: float = 0.5,
    budget_metric: str = "params",
    strategy_params: Mapping[str, Mapping[str, Any]] | None = None,
    latency: LatencySettings | Mapping[str, Any] | bool | None = None,
) -> SearchResult:
    """Search per-layer sparsity and retrain settings of ``model`` under ``budget``, within a
    fine-tuning compute budget (``compute``), and return the final model.

    The study screens candidates cheaply (successive halving over fine-tuning epochs), then
    retrains the best with the full regime (gradual pruning, long schedule) and chooses the
    final model among them on validation (:mod:`sparsesearch.fidelity`).

    Args:
        model: an ``nn.Module`` (trained or not: a module at chance level on validation is
            trained first, or say ``trained=``) or a zoo name such as ``"lenet5"``.
        data: a dataset name (``"digits"``, ``"mnist-5k"``) or a ``(train, val, test)`` tuple.
        budget: an int (maximum remaining parameters) or a float in (0, 1] (fraction of the
            model's parameters to keep), counted by :func:`sparsesearch.count_params`; with
            ``objective="pareto"`` also ``[low, high]``: each trial samples its own budget in
            that range (log scale, trial parameter ``budget``), so one study spans the
            accuracy-vs-size front.
        strategies: strategy names searched over (a categorical dimension).
        compute: the study's fine-tuning compute: epochs (a number) or a
            :class:`sparsesearch.ComputeBudget` / dict of its fields (default: 4 × the dense
            training's epochs, 80% of it for the finalist).
        n_trials: at most this many screening trials in this call (default: until the
            screening share of ``compute`` is spent).
        timeout: seconds of screening in this call (the finalists still train).
        max_complete: stop screening once the study holds this many COMPLETE trials.
        storage: an Optuna storage URL, ``journal:PATH`` or storage object; default
            ``sqlite:///runs/<study_name>/study.db``.
        objective: ``"accuracy"`` (maximise validation accuracy) or ``"pareto"`` (maximise
            validation accuracy, minimise remaining parameters; screening only, no pruner).
        pruner: ``"halving"`` (successive halving over screening epochs, default),
            ``"median"``, ``"hyperband"``, ``"none"`` or an Optuna pruner.
        space: a :class:`SearchSpace` or a dict of its fields.
        budget_metric: ``"params"`` (default) or ``"macs"`` (multiply-accumulates per sample).
        local_fraction: share of the screening trials after the seeds that perturb the best
            trial so far instead of following TPE (0 = plain TPE).
        data_options: keyword arguments of :func:`sparsesearch.data.load_dataset`.
        checkpoint: a trained state_dict file for ``model`` (loaded with ``weights_only=True``).
        strategy_params: ``{strategy: {hyperparameter: value}}`` fixing (a number or a choice)
            or narrowing (``[low, high]``, a list of choices) what strategy plugins suggest
            through ``sparsesearch_suggest_params``.
        latency: prefer faster models, measured on this machine (channel strategies,
            ``objective="accuracy"``): ``True`` or a :class:`sparsesearch.LatencySettings` /
            dict of its fields. The fastest budget-filling seed allocations are trained first,
            every trial records its latency, and of models validation cannot tell apart the
            faster is kept (:mod:`sparsesearch.latency`). Default: off.
    Returns:
        a :class:`SearchResult`; its test accuracy is measured for the final model only.
    """
    if objective not in ("accuracy", "pareto"):
        raise SparsesearchError(f"objective must be 'accuracy' or 'pareto', got {objective=}")
    if isinstance(strategies, str):
        strategies = [strategies]
    if not isinstance(strategies, (list, tuple)) or not all(isinstance(s, str) for s in strategies):
        raise SparsesearchError(
            f"strategies must be a strategy name or a list of names, got {strategies!r}")
    strategies = list(dict.fromkeys(strategies))
    if not strategies:
        raise SparsesearchError("strategies is empty: name at least one strategy")
    infos = [plugins.get_strategy(s) for s in strategies]  # unknown names fail here
    latency_settings = LatencySettings.from_mapping(latency)
    if latency_settings is not None:
        if objective != "accuracy":
            raise SparsesearchError(
                f"latency preference needs objective='accuracy' (a pareto study returns the whole "
                f"size trade-off), got {objective=}")
        weight = [i.name for i in infos if i.strategy.granularity != "channel"]
        if weight:
            raise SparsesearchError(
                f"latency preference needs channel strategies: weight sparsity keeps the dense "
                f"shapes, and so the dense model's CPU latency (not channel strategies: {', '.join(weight)})")
    overrides = {str(k): dict(v) for k, v in (strategy_params or {}).items()}
    for name in overrides:
        if name not in strategies:
            raise SparsesearchError(
                f"strategy_params names {name!r}, which is not among the strategies {strategies}")
    if isinstance(heuristics, str):
        heuristics = [heuristics]
    if not isinstance(heuristics, (list, tuple)) or not all(isinstance(h, str) for h in heuristics):
        raise SparsesearchError(f"heuristics must be a list of names, got {heuristics!r}")
    heuristics = list(dict.fromkeys(heuristics))
    for h in heuristics:
        if h not in HEURISTICS:
            raise SparsesearchError(f"unknown heuristic {h!r}; known: {', '.join(HEURISTICS)}")
    space = SearchSpace.from_mapping(space)
    if space.allocation != "layers" and not heuristics:
        raise SparsesearchError(
            f"allocation {space.allocation!r} is built on the heuristics, and heuristics is empty: "
            f"name at least one, or use allocation='layers'"
        )
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 0):
        raise SparsesearchError(f"n_trials must be >= 0, got {n_trials=}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise SparsesearchError(f"timeout must be a number of seconds > 0, got {timeout=}")
    if isinstance(local_fraction, bool) or not isinstance(local_fraction, (int, float)) \
            or not 0.0 <= local_fraction <= 1.0:
        raise SparsesearchError(f"local_fraction must be in [0, 1], got {local_fraction=}")
    budget_compute = ComputeBudget.from_mapping(compute)
    dense_settings = DenseSettings(**dense) if isinstance(dense, Mapping) else (dense or DenseSettings())
    torch_device = resolve_device(device)
    if not isinstance(storage, optuna.storages.BaseStorage):  # None, a URL or journal:PATH
        # before any training: an unreachable database fails now, not after the dense model
        storage = make_storage(storage, study_name=study_name, runs_dir=runs_dir)
    run_dir = run_folder(runs_dir, study_name)  # a name that stays inside runs_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    data_key = _data_key(data, data_options)
    net, built, trained, splits = _resolve_problem(
        model, data, seed=seed, trained=trained, model_kwargs=model_kwargs,
        data_options=data_options, checkpoint=checkpoint, device=torch_device,
    )
    if objective == "pareto":
        budget_compute = dataclasses.replace(budget_compute, finalists=0)
    budget_low: int | float | None = None
    if isinstance(budget, (list, tuple)):
        if objective != "pareto" or len(budget) != 2 or not budget[0] < budget[1]:
            raise SparsesearchError(
                f"a budget range [low, high] needs objective='pareto' and low < high, got "
                f"{budget=} with {objective=}")
        budget_low, budget = budget[0], budget[1]
    identity = _identity(
        model=model, net=net, data_key=data_key,
        budget=budget if budget_low is None else [budget_low, budget], budget_metric=budget_metric,
        seed=seed, space=space, strategies=strategies, heuristics=heuristics,
        compute=budget_compute, objective=objective, dense=dense_settings, include=include,
        exclude=exclude, trained=trained, strategy_params=overrides,
        latency=None if latency_settings is None else {"batch": latency_settings.batch},
    )
    _check_identity(storage, study_name, identity)
    example = _example(splits, torch_device)
    # the plans depend on the structure only: made once, before the dense model is trained (in
    # place, the same modules), so an infeasible budget is refused before any work
    layers = find_layers(net, include=include, exclude=exclude)
    plans = _plan_all(net, infos, layers, budget, space, budget_metric, example)
    budget_params = next(iter(plans.values())).budget_params
    budget_range = None
    if budget_low is not None:
        low_plans = _plan_all(net, infos, layers, budget_low, space, budget_metric, example)
        budget_range = (next(iter(low_plans.values())).budget_params, budget_params)
    dense_model = _train_dense(net, built, trained, splits, data, data_options, dense_settings,
                               seed, torch_device, run_dir, label=_label(model))
    if dense_model is not net:  # pragma: no cover - _prepare_dense trains and loads in place
        raise AssertionError("the dense model must be the planned module, trained in place")
    dense_epochs = dense_settings.resolved_epochs(len(splits.train))
    space = space.resolve(len(splits.train))
    budget_compute = budget_compute.resolve(dense_epochs)
    trial_epochs = space.epochs[0] if isinstance(space.epochs, tuple) else space.epochs
    fitted = budget_compute.leaving_screening(int(trial_epochs))
    if fitted != budget_compute:
        log.warning("a compute budget of %g epochs at final_share %g leaves the screening %d epochs, "
                    "less than one %d-epoch trial: the finalists get %d epochs each instead",
                    budget_compute.total, budget_compute.final_share, budget_compute.screen_epochs,
                    trial_epochs, fitted.final_epochs())
        budget_compute = fitted
    total_params = count_params(dense_model).total
    dense_val = evaluate(dense_model, splits.val, device=torch_device)
    if dense_val <= _near_chance(splits.num_classes):
        log.warning("the dense model is at chance level on validation (%.3f with %d classes): "
                    "check the data, the model, or the dense training settings", dense_val,
                    splits.num_classes)

    directions = ["maximize", "minimize"] if objective == "pareto" else ["maximize"]
    seeds: list[tuple[str, dict[str, Any], float | None]] = [
        (h, sv, None) for h in heuristics for sv in space.seed_values()]
    created = create_study_once(storage, study_name, directions)  # one of several workers
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=_make_sampler(seed, len(seeds), local_fraction),
        pruner=(_make_pruner(pruner, len(seeds), budget_compute, space)
                if objective == "accuracy" else optuna.pruners.NopPruner()),
        load_if_exists=True,
    )
    settings = {
        "strategies": strategies, "objective": objective, "seed": seed,
        "space": space.to_dict(), "heuristics": list(heuristics),
        "dense": dataclasses.asdict(dense_settings), "num_batches": num_batches,
        "include": list(include or []), "exclude": list(exclude or []),
        "data": data if isinstance(data, str) else "(datasets)",
        "model": model if isinstance(model, str) else type(model).__name__,
        "latency": None if latency_settings is None else latency_settings.to_dict(),
    }
    budget_key = record.budget_key(budget_metric)
    teacher = copy.deepcopy(dense_model).eval()
    obj = _Objective(
        strategies=strategies, plans=plans, space=space, compute=budget_compute,
        heuristics=heuristics, seed=seed, dense=dense_model,
        splits=splits, device=torch_device, teacher=teacher, num_batches=num_batches,
        multi_objective=objective == "pareto", strategy_overrides=overrides, budget_range=budget_range,
        score_dir=run_dir if isinstance(data, str) else None,
        score_key=(data_key, _state_fingerprint(dense_model)), latency=latency_settings,
    )
    # attributes and seeds are written once. A latency-preferring owner times its seeds before it
    # writes the attributes, so the others wait for them longer (and never train before the seeds)
    owner, existing = setup_owner(study, created, key=budget_key,
                                  timeout=10.0 if latency_settings is None else LATENCY_SETUP_WAIT)
    if budget_key in existing and existing[budget_key] != budget_params:
        raise SparsesearchError(
            f"study {study_name!r} was created with {budget_key}={existing[budget_key]}, "
            f"not {budget_params}; use another study name"
        )
    if owner:
        study.set_metric_names(["val_accuracy", "params"] if objective == "pareto" else ["val_accuracy"])
        setup = {
            budget_key: int(budget_params), record.BUDGET_METRIC: budget_metric,
            record.TOTAL_PARAMS: int(total_params), record.SETTINGS: settings,
            record.DENSE_VAL: float(dense_val), record.DENSE_EPOCHS: int(dense_epochs),
            record.VAL_SIZE: len(splits.val), record.COMPUTE: budget_compute.to_dict(),
            record.IDENTITY: identity, record.FORMAT: record.STUDY_FORMAT,
        }
        if budget_metric == "macs":
            setup[record.TOTAL_MACS] = int(next(iter(plans.values())).total_params)
        if budget_range is not None:
            setup[record.BUDGET_RANGE] = list(budget_range)
        if latency_settings is not None:  # the fastest budget-filling allocations seed the study
            seeds, timed = _fastest_seeds(obj, plans[infos[0].strategy.granularity], seeds)
            if timed is not None:
                setup[record.LATENCY_CANDIDATES] = timed
        record.study_attrs(study, setup)  # one write: a worker that sees the budget sees all

    if owner:
        _enqueue_seeds(study, obj, seeds, infos[0].strategy, plans)
    elif not study.user_attrs.get(record.FINALS_ENQUEUED):
        with FileLock(str(run_dir / ".finals.lock")):  # a seed Ctrl-C or SIGTERM stopped: again
            for t in requeue_interrupted(
                    study, lambda t: (json.dumps(t.params, sort_keys=True)
                                      if t.user_attrs.get(record.SEED_TRIAL) else None),
                    inputs=(record.HEURISTIC, record.SEED_TRIAL)):
                log.info("heuristic seed trial #%d (%s) was interrupted: it is queued again",
                         t.number, t.user_attrs.get(record.HEURISTIC))
    cbs: list[Callable] = list(callbacks)
    cbs.append(lambda s, t: _observe_trial(s, t))
    stop = _BudgetStop(obj, max_failed_in_a_row=max(MAX_FAILED_IN_A_ROW, len(seeds)))

    try:
        # 1. screening, until its share of the compute is spent (or n_trials / timeout)
        trials = study.get_trials(deepcopy=False)
        screen_left = budget_compute.screen_epochs - epochs_spent(trials, record.SCREEN)
        closed = bool(study.user_attrs.get(record.FINALS_ENQUEUED))
        if not closed and n_trials != 0 and screen_left >= 1:
            run_study(study, obj, n_trials=n_trials, timeout=timeout, max_complete=max_complete,
                      callbacks=[*cbs, stop], show_progress_bar=show_progress)
        # 2. the finalists, retrained at full fidelity
        if budget_compute.final_runs and objective == "accuracy":
            # every WAITING trial runs: left-over seeds stop at once ("screening closed")
            waiting = _enqueue_finals(study, budget_compute, run_dir)
            if waiting:
                run_study(study, obj, n_trials=waiting, timeout=None, max_complete=None,
                          callbacks=cbs, show_progress_bar=show_progress)
    except BaseException:
        with contextlib.suppress(Exception):  # an interrupted run records what it spent too
            _record_epochs(study)
        raise
    _record_epochs(study)
    return _result(study, obj.models, dense_model, splits, torch_device, dense_val, budget_params,
                   total_params, compute_total=obj.compute.total, evaluate_test=evaluate_test,
                   objective=objective)


# the family's temperatures a latency-preferring study times, within alloc_temperature: from
# uniform (0) to each heuristic (1), never sharper. Sharper allocations were the fastest and the
# least accurate (resnet8 on digits at 15 % of its MACs, lamp at 1.5-2: 74.7-94.7 % test after the
# search's final regime, against 96.1-98.6 % at 0-1; docs/benchmarks.md, "Session 8")
LATENCY_TEMPERATURES = (0.0, 0.5, 1.0)
LATENCY_SETUP_WAIT = 120.0  # seconds another worker waits for a latency-preferring owner's set-up


def _fastest_seeds(obj: _Objective, plan: BudgetPlan, seeds: Sequence[tuple[str, dict[str, Any], float | None]],
                   ) -> tuple[list[tuple[str, dict[str, Any], float | None]], list[dict[str, Any]] | None]:
    """A latency-preferring study's seeds: each heuristic's allocation (in ``family`` mode at
    :data:`LATENCY_TEMPERATURES`, within ``alloc_temperature``) masked on the dense model with the first
    strategy, compacted and timed against it; the fastest distinct ones replace the heuristic
    seeds, as many as there were heuristics, fastest first; and the timings (the study
    attribute ``latency_candidates``). When the allocations cannot be made (a strategy that
    fails), the heuristic seeds stay, with a warning, and the timings are ``None``."""
    space, strategy = obj.space, obj.strategies[0]
    lo, hi = space.alloc_temperature
    if space.allocation == "family":  # those its trials can take (a fixed one: that one)
        temperatures = sorted({min(max(t, lo), hi) for t in LATENCY_TEMPERATURES})
    else:
        temperatures = [1.0]
    try:
        scores = obj.scores_for(strategy, {})
        candidates: dict[Any, tuple[str, float, dict[str, int]]] = {}
        for h in obj.heuristics:
            for tau in temperatures:
                keep = obj.family_keep(h, tau, strategy, {}, plan, scores)
                candidates.setdefault(tuple(sorted(keep.items())), (h, tau, keep))
        x = _example(obj.splits, obj.device)
        models = {}
        for i, (h, tau, keep) in enumerate(candidates.values()):
            recipe = Recipe(strategy=strategy, sparsity=plan.to_sparsity(keep), granularity=plan.granularity,
                            data_seed=obj.seed, score={"num_batches": obj.num_batches, "seed": obj.seed})
            masked = replay(obj.dense, recipe, obj.splits, device=obj.device, scores=scores, retrain=False).model
            res = _compacted(masked, x)
            models[str(i)] = masked if res.fallback else res.model
    except SparsesearchError as exc:
        log.warning("latency: the seed allocations were not timed, the heuristic seeds stay: %s", exc)
        return list(seeds), None
    assert obj.latency is not None
    log.info("latency: timing %d seed allocations on this machine (batch %d, %d rounds)", len(models),
             obj.latency.batch, obj.latency.rounds)
    ratios = latency_ratios(models, obj.dense, obj.latency_input(), obj.latency)
    timed = sorted(({"heuristic": h, "temperature": tau, "latency": round(ratios[str(i)], 4)}
                    for i, (h, tau, _) in enumerate(candidates.values())), key=lambda c: c["latency"])
    n = len(obj.heuristics)
    log.info("latency: %d seed allocations timed (batch %d); the fastest %s", len(timed), obj.latency.batch,
             ", ".join(f"{c['heuristic']} at temperature {c['temperature']:g} ({c['latency']:.2f}x dense)"
                       for c in timed[:n]))
    values = space.seed_values()
    return [(c["heuristic"], sv, c["temperature"] if space.allocation == "family" else None)
            for c in timed[:n] for sv in values], timed


def _enqueue_seeds(study: optuna.Study, obj: _Objective,
                   seeds: Sequence[tuple[str, dict[str, Any], float | None]],
                   first: Any, plans: Mapping[str, BudgetPlan]) -> None:
    """The heuristic seeds ``(heuristic, settings, temperature)``, first in the queue: in
    ``family`` mode each is ``alloc:heuristic`` at its temperature (``None``: 1, which is the
    heuristic's allocation exactly)."""
    space = obj.space
    plan = plans[first.granularity]
    needs_scores = space.allocation == "layers" and any(h in ("global", "lamp") for h, _, _ in seeds)
    scores = None
    if needs_scores:
        try:
            scores = obj.scores_for(first.name, {})
        except SparsesearchError as exc:  # the plugin's failure, named: the seeds that need
            # its scores are left out; its own trials fail like any trial would
            log.warning("the global/lamp seed trials are left out: %s", exc)
            seeds = [(h, sv, tau) for h, sv, tau in seeds if h not in ("global", "lamp")]
    for i, (h, sv, tau) in enumerate(seeds):
        params = dict(sv)
        if obj.budget_range is not None:  # the seeds spread over the budgets, geometrically
            lo, hi = obj.budget_range
            params["budget"] = int(round(lo * (hi / lo) ** (i / max(len(seeds) - 1, 1))))
            plan = dataclasses.replace(plans[first.granularity], budget_params=params["budget"])
        if len(obj.strategies) > 1:
            params["strategy"] = obj.strategies[0]
        if space.allocation == "layers":
            keep = obj.heuristic_keep(h, first.name, {}, plan, scores)
            top = max(keep[lb.name] / lb.units for lb in plan.layers)
            for lb in plan.layers:
                d = keep[lb.name] / lb.units / top
                params[f"density:{lb.name}"] = min(max(d, DENSITY_LOW), 1.0)
        else:
            if len(obj.heuristics) > 1:
                params["alloc:heuristic"] = h
            lo, hi = space.alloc_temperature
            if space.allocation == "family" and lo < hi:
                params["alloc:temperature"] = min(max(1.0 if tau is None else tau, lo), hi)
        study.enqueue_trial(params, user_attrs={record.HEURISTIC: h, record.SEED_TRIAL: True},
                            skip_if_exists=False)
    study.set_user_attr(record.SEEDS_ENQUEUED, len(seeds))


MAX_FAILED_IN_A_ROW = 5  # screening trials failing one after the other that end the screening


class _BudgetStop:
    """Stops the screening once its share of the compute is spent (after each trial). What a
    screening trial left is the objective's count (the study's trials read when the trial
    started, less its epochs): no second read of the trials per trial. Epochs that other
    workers spent meanwhile are seen by the next trial, which then stops at once. It also stops
    after ``max_failed_in_a_row`` failed trials one after the other (failures spend nothing)."""

    def __init__(self, objective: _Objective, *, max_failed_in_a_row: int = MAX_FAILED_IN_A_ROW) -> None:
        self.objective = objective
        self.max_failed = max_failed_in_a_row
        self.failed_in_a_row = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # a failed trial spends no epochs: without this, trials that fail for one cause (NaN
        # data, a typo in strategy_params, a broken plugin) would be retried forever
        self.failed_in_a_row = self.failed_in_a_row + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        if self.failed_in_a_row >= self.max_failed:
            log.warning("stopping the screening: its last %d trials failed (the last: %s)",
                        self.failed_in_a_row, trial.user_attrs.get(record.FAIL_REASON, "no reason stored"))
            study.stop()
            return
        left, self.objective.screen_left = self.objective.screen_left, None
        if left is None:  # not one of this process's screening trials (surplus, closed, ...)
            left = self.objective.compute.screen_epochs - epochs_spent(
                study.get_trials(deepcopy=False), record.SCREEN)
        if left < 1:
            study.stop()


def _record_epochs(study: optuna.Study) -> None:
    """The study's ``epochs_trained``: the fine-tuning epochs of all its trials, written once
    when a run ends (not after every trial: one storage write less per trial; readers that
    need it live sum the trials' ``epochs``)."""
    study.set_user_attr(record.EPOCHS_TRAINED, epochs_spent(study.get_trials(deepcopy=False)))


def _enqueue_finals(study: optuna.Study, compute: ComputeBudget, run_dir: Path) -> int:
    """Enqueue the finalists once per study (file lock between local workers); return how
    many finalists are still WAITING."""
    with FileLock(str(run_dir / ".finals.lock")):
        if not study.user_attrs.get(record.FINALS_ENQUEUED):
            trials = study.get_trials(deepcopy=False)
            # (the fastest of those validation cannot tell apart first: a latency-preferring study)
            chosen = screen_ranking(trials, int(study.user_attrs.get(record.VAL_SIZE, 0) or 0))[: compute.finalists]
            for t in chosen:
                for scale in compute.final_lr_scales:
                    study.enqueue_trial(dict(t.params), user_attrs={
                        record.PHASE: record.FINAL, record.FINALIST_OF: t.number,
                        record.LR_SCALE: scale, record.HEURISTIC: t.user_attrs.get(record.HEURISTIC),
                    }, skip_if_exists=False)
            study.set_user_attr(record.FINALS_ENQUEUED, [t.number for t in chosen])
            if chosen:
                log.info("finalists: trials %s retrained for %d epochs each",
                         ", ".join(f"#{t.number}" for t in chosen), compute.final_epochs())
        else:  # a finalist that Ctrl-C or SIGTERM stopped trains again, in full
            again = requeue_interrupted(
                study, lambda t: ((t.user_attrs.get(record.FINALIST_OF), t.user_attrs.get(record.LR_SCALE))
                                  if t.user_attrs.get(record.PHASE) == record.FINAL else None),
                inputs=(record.PHASE, record.FINALIST_OF, record.LR_SCALE, record.HEURISTIC))
            for t in again:
                log.warning("finalist trial #%d was interrupted after %d epochs: it is retrained "
                            "from the start (its epochs count in the study's compute)", t.number,
                            int(t.user_attrs.get(record.EPOCHS, 0)))
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    return len(waiting) if any(t.user_attrs.get(record.PHASE) == record.FINAL for t in waiting) else 0


def _observe_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    for problem in plugins.call_observers("sparsesearch_trial_end", study=study, trial=trial):
        log.warning("%s", problem)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's chosen trial: the final model among the finalists (see
    :func:`sparsesearch.fidelity.choose_final`) once they ran; otherwise the best COMPLETE
    trial (highest validation accuracy, then fewest params, then lowest number; in a
    latency-preferring study, of the trials within one standard error of the best accuracy,
    the fastest: :func:`sparsesearch.fidelity.fastest`). For pareto studies, the most accurate
    point of the front."""
    trials = study.get_trials(deepcopy=False)
    val_size = int(study.user_attrs.get(record.VAL_SIZE, 0) or 0)
    final = choose_final(trials, val_size)
    if final is not None:
        return final
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise _no_complete_trial(study.study_name, trials)
    # (without recorded latencies: every trial close to the best, so the most accurate)
    return max(fastest(close_to_best(complete, val_size)),
               key=lambda t: (t.values[0], -t.user_attrs.get(record.PARAMS, 0), -t.number))


def _no_complete_trial(name: str, trials: Sequence[optuna.trial.FrozenTrial]) -> NoCompleteTrialError:
    """The error of a study without a COMPLETE trial, saying why where trials failed."""
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    if not failed:
        return NoCompleteTrialError(f"study {name!r} has no COMPLETE trial yet")
    why = {t.number: (str(t.user_attrs.get(record.FAIL_REASON) or "no reason stored").splitlines()
                      or ["no reason stored"])[0] for t in failed}
    reason, count = collections.Counter(why.values()).most_common(1)[0]
    first = next(t for t in failed if why[t.number] == reason)
    which = "all with" if count == len(failed) else f"{count} of them with"
    finished = [t for t in trials if t.state.is_finished()]
    return NoCompleteTrialError(
        f"study {name!r} has no COMPLETE trial: {len(failed)} of {len(finished)} trial"
        f"{'s' if len(finished) != 1 else ''} failed, {which}: {reason}",
        trial=first.number, trial_traceback=first.user_attrs.get(record.TRACEBACK),
    )


def rebuild(study: optuna.Study, trial: optuna.trial.FrozenTrial, dense_model: nn.Module, splits: Any,
            device: torch.device) -> nn.Module:
    """Replay a stored trial's recipe from the dense model."""
    recipe = Recipe.from_dict(trial.user_attrs[record.RECIPE])
    return apply_recipe(dense_model, recipe, splits, device=device)


def study_result(study: optuna.Study, dense_model: nn.Module, splits: Any, *, device: str = "cpu",
                 evaluate_test: bool = True) -> SearchResult:
    """The :class:`SearchResult` of a study whose trials ran elsewhere (worker processes, other
    machines), as :func:`search` returns it: the chosen trial's model replayed from its recipe
    on ``dense_model`` (from :func:`prepare_dense_model`, the same as the trials started from),
    its test accuracy measured once and recorded; the study's ``epochs_trained`` brought up to
    date. The budgets, totals and compute are the ones the study recorded."""
    attrs = study.user_attrs
    metric = attrs.get(record.BUDGET_METRIC, "params")
    if record.budget_key(metric) not in attrs:
        raise SparsesearchError(f"study {study.study_name!r} was not set up by sparsesearch "
                                f"(no {record.budget_key(metric)!r} attribute)")
    _record_epochs(study)
    return _result(
        study, {}, dense_model.eval(), splits, resolve_device(device), float(attrs[record.DENSE_VAL]),
        int(attrs[record.budget_key(metric)]), int(attrs[record.TOTAL_PARAMS]),
        compute_total=float((attrs.get(record.COMPUTE) or {}).get("epochs") or 0.0),
        evaluate_test=evaluate_test, objective="pareto" if len(study.directions) > 1 else "accuracy",
    )


def _result(study: optuna.Study, models: Mapping[int, nn.Module], dense_model: nn.Module, splits: Any,
            device: torch.device, dense_val: float, budget_params: int, total_params: int, *,
            compute_total: float, evaluate_test: bool, objective: str) -> SearchResult:
    """The result of a study: the chosen trial (its trained model when this process kept it,
    else replayed from its recipe), its test accuracy measured and recorded."""
    best = best_trial(study)
    model = models.get(best.number)
    if model is None:
        model = rebuild(study, best, dense_model, splits, device)
    model = make_permanent(model)
    recipe = Recipe.from_dict(best.user_attrs[record.RECIPE])
    recipe = dataclasses.replace(recipe, params=int(best.user_attrs[record.PARAMS]))
    test_acc = dense_test = None
    chosen: dict[str, Any] = {}
    if best.user_attrs.get(record.PHASE) == record.FINAL:
        chosen[record.FINAL_TRIAL] = best.number
    if evaluate_test and splits.test is not None:
        test_acc = evaluate(model, splits.test, device=device)
        dense_test = evaluate(dense_model, splits.test, device=device)
        stored = dict(study.user_attrs.get(record.TEST_ACCURACY, {}))
        stored[str(best.number)] = test_acc
        chosen.update({record.TEST_ACCURACY: stored, record.BEST_TRIAL: best.number,
                       record.DENSE_TEST: dense_test})
    record.study_attrs(study, chosen)
    front = list(study.best_trials) if objective == "pareto" else []
    result = SearchResult(
        study=study, best_trial=best, model=model, recipe=recipe, dense_model=dense_model,
        val_accuracy=float(best.values[0]), test_accuracy=test_acc, dense_val_accuracy=dense_val,
        dense_test_accuracy=dense_test, params=int(best.user_attrs[record.PARAMS]),
        total_params=total_params, budget_params=budget_params, pareto_front=front,
        budget_metric=study.user_attrs.get(record.BUDGET_METRIC, "params"),
        epochs_trained=int(study.user_attrs.get(record.EPOCHS_TRAINED, 0)),
        compute_budget=float(compute_total),
    )
    for problem in plugins.call_observers("sparsesearch_study_end", study=study, result=result):
        log.warning("%s", problem)
    return result


search = functools.wraps(_search)(search)  # the signature and docstring of _search
search.__name__ = search.__qualname__ = "search"
