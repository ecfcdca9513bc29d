"""LocalTPESampler: local moves stay in bounds, near the incumbent, and are seeded."""

from __future__ import annotations

import math

import optuna

from sparsesearch.sampler import LocalTPESampler


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 1e-3, 1.0, log=True)
    n = trial.suggest_int("n", 1, 5)
    opt = trial.suggest_categorical("opt", ["sgd", "adamw"])
    return -abs(math.log(x) - math.log(0.05)) - abs(n - 3) * 0.1 + (opt == "sgd") * 0.05


def _study(seed: int, local_fraction: float) -> optuna.Study:
    study = optuna.create_study(
        direction="maximize",
        sampler=LocalTPESampler(seed=seed, n_startup_trials=4, local_fraction=local_fraction),
    )
    study.enqueue_trial({"x": 0.04, "n": 3, "opt": "sgd"})
    study.optimize(_objective, n_trials=20)
    return study


def test_same_seed_same_trials():
    a, b = _study(1, 0.5), _study(1, 0.5)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_all_local_moves_stay_near_the_incumbent_and_in_bounds():
    study = _study(0, 1.0)
    later = study.trials[4:]
    for t in later:
        assert 1e-3 <= t.params["x"] <= 1.0 and 1 <= t.params["n"] <= 5
    # every local move is within a few log-steps of the seed region (0.04)
    assert all(abs(math.log(t.params["x"]) - math.log(0.04)) < 3.0 for t in later)
    assert study.best_value >= _objective(optuna.trial.FixedTrial({"x": 0.04, "n": 3, "opt": "sgd"}))


def test_local_fraction_zero_is_plain_tpe_proposals():
    a = _study(2, 0.0)
    b = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=2, n_startup_trials=4, n_ei_candidates=24, multivariate=True, group=True,
            constant_liar=True,
        ),
    )
    b.enqueue_trial({"x": 0.04, "n": 3, "opt": "sgd"})
    b.optimize(_objective, n_trials=20)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
