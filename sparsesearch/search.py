"""The Optuna study: per-layer sparsity and retrain settings under a hard parameter budget.

Per trial: choose a strategy, sample relative per-layer densities, project them onto the
budget (met before any training), mask at the exact amounts, fine-tune with per-epoch
validation reports (pruned by Optuna's pruner), record. The first trials are the heuristic
allocations (uniform, global, LAMP, ERK) at a few learning rates, so the search starts from
what users would do instead and its best value is never below theirs on validation.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import torch
from torch import nn

from sparsesearch import plugins
from sparsesearch.budget import HEURISTICS, BudgetPlan, count_params, plan_budget
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.masks import make_permanent
from sparsesearch.recipe import Recipe, RetrainSettings, apply_recipe
from sparsesearch.score import DEFAULT_GRADIENT_BATCHES, compute_scores
from sparsesearch.space import SearchSpace

__all__ = ["DenseSettings", "SearchResult", "search", "mask_url", "default_storage"]

log = logging.getLogger("sparsesearch")

DENSITY_LOW = 1e-3  # smallest relative density a trial can sample for a layer


@dataclasses.dataclass(frozen=True)
class DenseSettings:
    """How the dense model is trained when it is not given trained (cached per study)."""

    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    batch_size: int = 128


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

    @property
    def compression(self) -> float:
        return self.total_params / max(self.params, 1)

    def summary(self) -> str:
        t = "n/a" if self.test_accuracy is None else f"{self.test_accuracy:.4f}"
        return (
            f"best trial #{self.best_trial.number} ({self.recipe.strategy}"
            f"{', ' + self.best_trial.user_attrs['heuristic'] if self.best_trial.user_attrs.get('heuristic') else ''}): "
            f"val {self.val_accuracy:.4f}, test {t}, params {self.params}/{self.total_params} "
            f"({self.compression:.1f}x; budget {self.budget_params}); dense val "
            f"{self.dense_val_accuracy:.4f}"
        )


def mask_url(url: str) -> str:
    """A storage URL safe to print: any password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (journal path, ...)
        import re

        return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def default_storage(study_name: str, runs_dir: str | Path = "runs") -> str:
    path = Path(runs_dir) / study_name / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _resolve_model(
    model: nn.Module | str, splits: Any, model_kwargs: Mapping[str, Any], seed: int = 0
) -> tuple[nn.Module, bool]:
    from sparsesearch.models import build_model

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


def _prepare_dense(
    model: nn.Module, *, built: bool, trained: bool | None, splits: Any, dense: DenseSettings,
    seed: int, device: torch.device, cache_dir: Path | None, data_key: str,
) -> nn.Module:
    from sparsesearch.train import evaluate, train_dense

    model = model.to(device)
    if trained is None:
        if built:
            trained = False
        else:
            acc = evaluate(model, splits.val, device=device)
            trained = acc > 1.5 / max(splits.num_classes, 2)
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
    else:
        log.info("dense model: training %s for %d epochs%s", type(model).__name__, dense.epochs,
                 f" (cached as {cache_path})" if cache_path is not None else "")
    return train_dense(
        model, splits, epochs=dense.epochs, lr=dense.lr, optimizer=dense.optimizer,
        batch_size=dense.batch_size, seed=seed, device=device, cache_path=cache_path,
        weight_decay=dense.weight_decay,
    )


class _Objective:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.best_value: float | None = None
        self.best_model: dict[int, nn.Module] = {}

    def __call__(self, trial: optuna.Trial) -> Any:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            raise

    def _run(self, trial: optuna.Trial) -> Any:
        heuristic = trial.user_attrs.get("heuristic")
        if len(self.strategies) > 1:
            strategy = trial.suggest_categorical("strategy", list(self.strategies))
        else:
            strategy = self.strategies[0]
        strat = plugins.get_strategy(strategy).strategy
        strategy_params = plugins.suggest_strategy_params(strategy, trial)
        plan: BudgetPlan = self.plans[strat.granularity]
        scores = self.scores_for(strategy, strategy_params)
        if heuristic:
            keep = self.heuristic_keep(heuristic, strategy, strategy_params, plan, scores)
            if self.space.allocation:  # the enqueued densities, so the sampler learns from seeds
                for lb in plan.layers:
                    trial.suggest_float(f"density:{lb.name}", DENSITY_LOW, 1.0, log=True)
        elif self.space.allocation:
            densities = {
                lb.name: trial.suggest_float(f"density:{lb.name}", DENSITY_LOW, 1.0, log=True)
                for lb in plan.layers
            }
            keep = plan.project(densities)
        else:
            raise SparsesearchError("allocation search is off and the trial has no heuristic")
        settings = self.space.suggest(trial)
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
        trial.set_user_attr("strategy", strategy)
        trial.set_user_attr("heuristic", heuristic)
        trial.set_user_attr("granularity", strat.granularity)
        trial.set_user_attr("sparsity", {k: round(v, 8) for k, v in sparsity.items()})
        if plan.metric == "params":
            trial.set_user_attr("params", int(expected))
        trial.set_user_attr("recipe", recipe.to_dict())

        can_prune = not self.multi_objective and not heuristic

        last: dict[str, float] = {}

        def on_epoch(epoch: int, acc: float) -> None:
            last["acc"] = acc
            if not math.isfinite(acc):
                raise SparsesearchError(f"validation accuracy is not finite at epoch {epoch}")
            if self.multi_objective:
                return
            trial.report(acc, epoch)
            if can_prune and trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with val accuracy {acc:.4f}")

        measured: dict[str, int] = {}

        def check_masked(masked: nn.Module, final: bool) -> None:
            # count once, on the final masks and before their fine-tuning: training never
            # un-prunes, so the count holds for the trained model too. Structured models are
            # counted compacted, where channels tied by a residual addition may stay.
            if not final:
                return
            measured["params"], measured["macs"] = self.measure(masked, strat.granularity)
            value = measured[plan.metric]
            if value > plan.budget_params:
                raise SparsesearchError(
                    f"the {'compacted ' if strat.granularity == 'channel' else ''}model keeps "
                    f"{value} {plan.metric}, over the budget {plan.budget_params}"
                    + (": channels tied by residual additions were kept"
                       if strat.granularity == "channel" else "")
                )

        model = apply_recipe(
            self.dense, recipe, self.splits, device=self.device,
            scores=scores, teacher=self.teacher, on_epoch=on_epoch, on_masked=check_masked,
        )
        counted = measured["params"]
        trial.set_user_attr("params", int(counted))
        trial.set_user_attr("macs", int(measured["macs"]))
        from sparsesearch.train import evaluate

        # the last epoch's validation accuracy is of these very weights; evaluate only
        # when no epoch ran
        val = last["acc"] if "acc" in last else evaluate(model, self.splits.val, device=self.device)
        if not math.isfinite(val):
            raise SparsesearchError("validation accuracy is not finite")
        trial.set_user_attr("val_accuracy", val)
        if self.keep_best and (self.best_value is None or val > self.best_value):
            self.best_value = val
            self.best_model = {trial.number: model}
        if self.multi_objective:
            return val, float(counted)
        return val

    def heuristic_keep(self, heuristic: str, strategy: str, params: Mapping[str, Any],
                       plan: BudgetPlan, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """A heuristic's allocation, computed once per (heuristic, strategy, params)."""
        cache = self.__dict__.setdefault("heuristic_cache", {})
        key = (heuristic, strategy, plan.granularity, json.dumps(params, sort_keys=True, default=str))
        if key not in cache:
            cache[key] = plan.heuristic(heuristic, scores)
        return dict(cache[key])

    def measure(self, model: nn.Module, granularity: str) -> tuple[int, int]:
        """Parameters counted against the budget, and MACs per sample. Structured models are
        counted compacted (a removed channel is credited with the downstream weights it
        kills); unstructured ones by their non-zero weights."""
        import warnings

        from sparsesearch.compact import compact
        from sparsesearch.macs import count_macs
        from sparsesearch.recipe import _example

        x = _example(self.splits, self.device)
        if granularity != "channel":
            return count_params(model).remaining, count_macs(model, x, nonzero=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = compact(model, example_input=x)
        if res.fallback:
            return count_params(model).remaining, count_macs(model, x)
        return int(res.params_after), count_macs(res.model, x)

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

            score_dir = getattr(self, "score_dir", None)
            if score_dir is None:
                self.score_cache[key] = compute()
            else:  # computed once per study, shared by its workers (file lock)
                from sparsesearch.workers import cached_tensors

                h = _fingerprint(self.score_key, key, self.seed, self.num_batches,
                                 self.space.batch_size, [lay.name for lay in layers])
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in strategy)
                self.score_cache[key] = cached_tensors(Path(score_dir) / f"scores-{safe}-{h}.pt", compute)
        return self.score_cache[key]


def _make_sampler(seed: int, n_startup: int, local_fraction: float) -> optuna.samplers.BaseSampler:
    from sparsesearch.sampler import LocalTPESampler

    return LocalTPESampler(seed=seed, n_startup_trials=n_startup, local_fraction=local_fraction)


def _make_pruner(pruner: str | optuna.pruners.BasePruner | None, n_seeds: int) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner in (None, "none"):
        return optuna.pruners.NopPruner()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(n_seeds, 5), n_warmup_steps=1)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    raise SparsesearchError(f"unknown pruner {pruner!r}; use 'median', 'hyperband' or 'none'")


def _as_data(data: Any, seed: int, options: Mapping[str, Any] | None = None):
    from sparsesearch.data import as_splits

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
    from sparsesearch.recipe import _example

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
    from sparsesearch.train import resolve_device

    dense_settings = DenseSettings(**dense) if isinstance(dense, Mapping) else (dense or DenseSettings())
    torch_device = resolve_device(device)
    splits = _as_data(data, seed, data_options)
    net, built = _resolve_model(model, splits, model_kwargs or {}, seed)
    if checkpoint is not None:
        from sparsesearch.models import load_checkpoint

        net = load_checkpoint(net, checkpoint)
        trained = True if trained is None else trained
    _check_fits(net, splits, torch_device)
    run_dir = Path(runs_dir) / study_name
    dense_model = _prepare_dense(
        net, built=built, trained=trained, splits=splits, dense=dense_settings, seed=seed,
        device=torch_device, cache_dir=run_dir if isinstance(data, str) else None,
        data_key=_data_key(data, data_options),
    )
    return dense_model.eval(), splits


def search(
    model: nn.Module | str,
    data: Any,
    budget: int | float,
    *,
    strategies: Sequence[str] | str = ("magnitude",),
    n_trials: int | None = 20,
    timeout: float | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "sparsesearch",
    seed: int = 0,
    space: SearchSpace | Mapping[str, Any] | None = None,
    objective: str = "accuracy",
    device: str = "cpu",
    heuristics: Sequence[str] = HEURISTICS,
    pruner: str | optuna.pruners.BasePruner | None = "median",
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
) -> SearchResult:
    """Search per-layer sparsity and retrain settings of ``model`` under ``budget``.

    Args:
        model: an ``nn.Module`` (trained or not: a module at chance level on validation is
            trained first, or say ``trained=``) or a zoo name such as ``"lenet5"``.
        data: a dataset name (``"digits"``, ``"mnist-5k"``) or a ``(train, val, test)`` tuple.
        budget: an int (maximum remaining parameters) or a float in (0, 1] (fraction of the
            model's parameters to keep), counted by :func:`sparsesearch.count_params`.
        strategies: strategy names searched over (a categorical dimension).
        n_trials: trials to add in this call (a resumed study keeps its earlier trials).
        max_complete: stop once the study holds this many COMPLETE trials (several workers).
        storage: an Optuna storage URL, ``journal:PATH`` or storage object; default
            ``sqlite:///runs/<study_name>/study.db`` (see :func:`sparsesearch.storage.make_storage`:
            heartbeats, retries of an unreachable database).
        objective: ``"accuracy"`` (maximise validation accuracy) or ``"pareto"`` (maximise
            validation accuracy, minimise remaining parameters; no pruner).
        space: a :class:`SearchSpace` or a dict of its fields.
        budget_metric: ``"params"`` (default) or ``"macs"``: the budget counts
            multiply-accumulates per sample of the Linear/Conv layers instead of parameters
            (an int is a MAC count, a float the fraction of the dense model's MACs).
        local_fraction: share of the trials after the seeds that perturb the best trial so
            far instead of following TPE (0 = plain TPE).
        data_options: keyword arguments of :func:`sparsesearch.data.load_dataset` for a named
            dataset (``root``, ``val_fraction``, loader options); part of the dense cache key.
        checkpoint: a trained state_dict file for ``model`` (loaded with ``weights_only=True``);
            the model is then taken as trained unless ``trained=False``.
    Returns:
        a :class:`SearchResult`; its test accuracy is measured for the best trial only.
    """
    from sparsesearch.train import evaluate, resolve_device

    if objective not in ("accuracy", "pareto"):
        raise SparsesearchError(f"objective must be 'accuracy' or 'pareto', got {objective=}")
    if isinstance(strategies, str):
        strategies = [strategies]
    strategies = list(dict.fromkeys(strategies))
    if not strategies:
        raise SparsesearchError("strategies is empty: name at least one strategy")
    infos = [plugins.get_strategy(s) for s in strategies]  # unknown names fail here
    for h in heuristics:
        if h not in HEURISTICS:
            raise SparsesearchError(f"unknown heuristic {h!r}; known: {', '.join(HEURISTICS)}")
    space = SearchSpace.from_mapping(space)
    if not space.allocation and not heuristics:
        raise SparsesearchError("the search space is empty: allocation search is off and no heuristics are given")
    if n_trials is None and timeout is None and max_complete is None:
        raise SparsesearchError("give n_trials, timeout or max_complete, or the study never ends")
    if n_trials is not None and n_trials < 0:
        raise SparsesearchError(f"n_trials must be >= 0, got {n_trials=}")
    dense_settings = DenseSettings(**dense) if isinstance(dense, Mapping) else (dense or DenseSettings())
    torch_device = resolve_device(device)
    if not isinstance(storage, optuna.storages.BaseStorage):  # None, a URL or journal:PATH
        from sparsesearch.storage import make_storage

        # before any training: an unreachable database fails now, not after the dense model
        storage = make_storage(storage, study_name=study_name, runs_dir=runs_dir)
    run_dir = Path(runs_dir) / study_name
    run_dir.mkdir(parents=True, exist_ok=True)
    data_key = _data_key(data, data_options)
    dense_model, splits = prepare_dense_model(
        model, data, seed=seed, dense=dense_settings, trained=trained, model_kwargs=model_kwargs,
        data_options=data_options, checkpoint=checkpoint, device=device, runs_dir=runs_dir,
        study_name=study_name,
    )
    dense_model.eval()
    layers = find_layers(dense_model, include=include, exclude=exclude)
    from sparsesearch.recipe import _example

    example = _example(splits, torch_device)
    plans = {}
    for info in infos:
        g = info.strategy.granularity
        if g not in plans:
            plans[g] = plan_budget(
                dense_model, layers, budget, granularity=g,
                min_sparsity=space.min_sparsity, max_sparsity=space.max_sparsity,
                metric=budget_metric, example_input=example,
            )
    budget_params = next(iter(plans.values())).budget_params
    total_params = count_params(dense_model).total
    dense_val = evaluate(dense_model, splits.val, device=torch_device)

    directions = ["maximize", "minimize"] if objective == "pareto" else ["maximize"]
    seeds = [(h, sv) for h in heuristics for sv in space.seed_values()]
    from sparsesearch.workers import create_study_once, setup_owner

    created = create_study_once(storage, study_name, directions)  # one of several workers
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=_make_sampler(seed, len(seeds), local_fraction),
        pruner=_make_pruner(pruner, len(seeds)) if objective == "accuracy" else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    settings = {
        "strategies": strategies, "objective": objective, "seed": seed,
        "space": space.to_dict(), "heuristics": list(heuristics),
        "dense": dataclasses.asdict(dense_settings), "num_batches": num_batches,
        "include": list(include or []), "exclude": list(exclude or []),
        "data": data if isinstance(data, str) else "(datasets)",
        "model": model if isinstance(model, str) else type(model).__name__,
    }
    owner, existing = setup_owner(study, created)  # attributes and seeds are written once
    budget_key = "budget_params" if budget_metric == "params" else "budget_macs"
    if budget_key in existing and existing[budget_key] != budget_params:
        raise SparsesearchError(
            f"study {study_name!r} was created with {budget_key}={existing[budget_key]}, "
            f"not {budget_params}; use another study name"
        )
    if owner:
        study.set_user_attr(budget_key, int(budget_params))
        study.set_user_attr("budget_metric", budget_metric)
        study.set_user_attr("total_params", int(total_params))
        if budget_metric == "macs":
            study.set_user_attr("total_macs", int(next(iter(plans.values())).total_params))
        study.set_user_attr("settings", settings)
        study.set_user_attr("dense_val_accuracy", float(dense_val))
        study.set_user_attr("val_size", len(splits.val))
        study.set_user_attr("format", "sparsesearch.study/1")

    teacher = copy.deepcopy(dense_model).eval()
    obj = _Objective(
        strategies=strategies, plans=plans, space=space, seed=seed, dense=dense_model,
        splits=splits, device=torch_device, teacher=teacher, num_batches=num_batches,
        multi_objective=objective == "pareto", score_cache={}, keep_best=True,
        score_dir=run_dir if isinstance(data, str) else None,
        score_key=(data_key, _state_fingerprint(dense_model)),
    )
    if owner:
        first = infos[0].strategy
        plan = plans[first.granularity]
        scores = obj.scores_for(first.name, {}) if any(h in ("global", "lamp") for h in heuristics) else None
        for h, sv in seeds:
            params = dict(sv)
            if len(strategies) > 1:
                params["strategy"] = strategies[0]
            if space.allocation:
                keep = obj.heuristic_keep(h, first.name, {}, plan, scores)
                top = max(keep[lb.name] / lb.units for lb in plan.layers)
                for lb in plan.layers:
                    d = keep[lb.name] / lb.units / top
                    params[f"density:{lb.name}"] = min(max(d, DENSITY_LOW), 1.0)
            study.enqueue_trial(params, user_attrs={"heuristic": h}, skip_if_exists=False)
        study.set_user_attr("seeds_enqueued", len(seeds))
    cbs: list[Callable] = list(callbacks)
    cbs.append(lambda s, t: _observe_trial(s, t))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are logged once, by us
    from sparsesearch.workers import run_study  # max_complete: exact with several workers

    run_study(study, obj, n_trials=n_trials, timeout=timeout, max_complete=max_complete,
              callbacks=cbs, show_progress_bar=show_progress)
    return _result(study, obj, dense_model, splits, torch_device, dense_val, budget_params,
                   total_params, evaluate_test=evaluate_test, objective=objective)


def _observe_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    for problem in plugins.call_observers("sparsesearch_trial_end", study=study, trial=trial):
        log.warning("%s", problem)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best COMPLETE trial: highest validation accuracy (fewest params, then lowest number
    on ties). For pareto studies, the most accurate point of the front."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not complete:
        raise SparsesearchError(f"study {study.study_name!r} has no COMPLETE trial yet")
    return max(complete, key=lambda t: (t.values[0], -t.user_attrs.get("params", 0), -t.number))


def rebuild(study: optuna.Study, trial: optuna.trial.FrozenTrial, dense_model: nn.Module, splits: Any,
            device: torch.device) -> nn.Module:
    """Replay a stored trial's recipe from the dense model."""
    recipe = Recipe.from_dict(trial.user_attrs["recipe"])
    return apply_recipe(dense_model, recipe, splits, device=device)


def _result(study, obj, dense_model, splits, device, dense_val, budget_params, total_params,
            *, evaluate_test: bool, objective: str) -> SearchResult:
    from sparsesearch.train import evaluate

    best = best_trial(study)
    model = obj.best_model.get(best.number)
    if model is None:
        model = rebuild(study, best, dense_model, splits, device)
    model = make_permanent(model)
    recipe = Recipe.from_dict(best.user_attrs["recipe"])
    recipe = dataclasses.replace(recipe, params=int(best.user_attrs["params"]))
    test_acc = dense_test = None
    if evaluate_test and splits.test is not None:
        test_acc = evaluate(model, splits.test, device=device)
        dense_test = evaluate(dense_model, splits.test, device=device)
        record = dict(study.user_attrs.get("test_accuracy", {}))
        record[str(best.number)] = test_acc
        study.set_user_attr("test_accuracy", record)
        study.set_user_attr("best_trial", best.number)
        study.set_user_attr("dense_test_accuracy", dense_test)
    front = list(study.best_trials) if objective == "pareto" else []
    result = SearchResult(
        study=study, best_trial=best, model=model, recipe=recipe, dense_model=dense_model,
        val_accuracy=float(best.values[0]), test_accuracy=test_acc, dense_val_accuracy=dense_val,
        dense_test_accuracy=dense_test, params=int(best.user_attrs["params"]),
        total_params=total_params, budget_params=budget_params, pareto_front=front,
        budget_metric=study.user_attrs.get("budget_metric", "params"),
    )
    for problem in plugins.call_observers("sparsesearch_study_end", study=study, result=result):
        log.warning("%s", problem)
    return result
