"""The study's sampler: TPE, plus local moves around the best trial so far.

Heuristic seeds (uniform, global, LAMP, ERK) already start close to good allocations. A plain
TPE over many per-layer densities spends most of its trials far from them, so a share of the
trials (``local_fraction``) instead perturbs the best completed trial: log-normal steps for
log-scale parameters (densities, learning rate), Gaussian steps for linear ones, ±1 for
integers, and mostly the same choice for categoricals. The other trials are TPE's. Everything
is seeded per trial number, so the same seed gives the same trials.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from sparsesearch import record
from sparsesearch.errors import SparsesearchError

__all__ = ["LocalTPESampler"]


class LocalTPESampler(optuna.samplers.BaseSampler):
    """TPE with a seeded share of local moves around the incumbent (best complete trial)."""

    def __init__(
        self,
        *,
        seed: int,
        n_startup_trials: int,
        local_fraction: float = 0.5,
        step: float = 0.35,
    ) -> None:
        if not 0.0 <= local_fraction <= 1.0:
            raise SparsesearchError(f"local_fraction must be in [0, 1], got {local_fraction=}")
        if not step > 0:
            raise SparsesearchError(f"step must be > 0, got {step=}")
        self._seed = seed
        self._n_startup = n_startup_trials
        self._local_fraction = local_fraction
        self._step = step
        self._tpe = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(n_startup_trials, 1),
            n_ei_candidates=24,
            multivariate=True,
            group=True,
            constant_liar=True,
        )

    # -- which trials are local -----------------------------------------------------------

    def _rng(self, trial: FrozenTrial, salt: int = 0) -> np.random.RandomState:
        return np.random.RandomState((self._seed * 7919 + trial.number * 104_729 + salt) % (2**32))

    def _local_incumbent(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        """The trial to perturb when ``trial`` is a local move (a seeded share of the trials
        once the startup ones finished), else None. One read of the study's trials."""
        finished = record.trials_at_ask(study, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(finished) < self._n_startup or not self._rng(trial, 1).rand() < self._local_fraction:
            return None
        done = [t for t in finished if t.state == TrialState.COMPLETE]
        if not done:
            return None
        if len(study.directions) > 1:
            front = study.best_trials
            return front[self._rng(done[-1]).randint(len(front))] if front else None
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        return max(done, key=lambda t: (sign * t.value, -t.number))

    def _perturb(self, value: Any, dist: BaseDistribution, rng: np.random.RandomState) -> Any:
        if isinstance(dist, CategoricalDistribution):
            if rng.rand() < 0.8 and value in dist.choices:
                return value
            return dist.choices[rng.randint(len(dist.choices))]
        if isinstance(dist, IntDistribution):
            v = int(value) + int(rng.choice([-1, 0, 1]))
            return int(min(max(v, dist.low), dist.high))
        if isinstance(dist, FloatDistribution):
            if dist.log:
                v = math.exp(math.log(value) + rng.normal(0.0, self._step))
            else:
                v = value + rng.normal(0.0, self._step * (dist.high - dist.low) / 4)
            v = min(max(v, dist.low), dist.high)
            if dist.step is not None:
                v = dist.low + round((v - dist.low) / dist.step) * dist.step
            return float(v)
        return value

    # -- BaseSampler ----------------------------------------------------------------------

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        best = self._local_incumbent(study, trial)
        if best is not None:
            rng = self._rng(trial, 2)
            out = {}
            for name in sorted(search_space):
                if name in best.params:
                    out[name] = self._perturb(best.params[name], search_space[name], rng)
            if len(out) == len(search_space):
                return out
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        best = self._local_incumbent(study, trial)
        if best is not None and param_name in best.params:
            rng = self._rng(trial, 3 + sum(map(ord, param_name)))
            return self._perturb(best.params[param_name], param_distribution, rng)
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state: TrialState, values: Sequence[float] | None) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()
