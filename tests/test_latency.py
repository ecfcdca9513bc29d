"""The latency preference (sparsesearch/latency.py; search(latency=...), the [latency] table):
the fastest budget-filling seed allocations, a latency per trial, and the faster of models
validation cannot tell apart."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

import sparsesearch
from sparsesearch import LatencySettings, record
from sparsesearch.errors import SparsesearchError
from sparsesearch.fidelity import choose_final, close_to_best, fastest, screen_ranking
from sparsesearch.latency import latency_ratios

FAST = {"rounds": 1, "min_run_time": 0.001, "batch": 8}  # timing is not what these tests measure


def _trial(number: int, val: float, *, phase: str = record.FINAL, latency: float | None = None,
           loss: float = 0.5) -> optuna.trial.FrozenTrial:
    attrs = {record.PHASE: phase, record.VAL_LOSS: loss}
    if latency is not None:
        attrs[record.LATENCY] = latency
    t = optuna.trial.create_trial(value=val, user_attrs=attrs)
    t.number = number
    return t


def test_settings_are_checked_and_off_unless_asked():
    assert LatencySettings.from_mapping(None) is None
    assert LatencySettings.from_mapping(False) is None
    assert LatencySettings.from_mapping({}) is None  # an empty [latency] table: off
    assert LatencySettings.from_mapping({"prefer": False, "batch": 8}) is None
    assert LatencySettings.from_mapping(True) == LatencySettings()
    assert LatencySettings.from_mapping({"batch": 8}).batch == 8
    with pytest.raises(SparsesearchError, match="unknown latency key 'bach'; did you mean 'batch'"):
        LatencySettings.from_mapping({"bach": 8})
    for bad in ({"batch": 0}, {"rounds": 1.5}, {"min_run_time": 0}, {"threads": 0}, {"prefer": "yes"}):
        with pytest.raises(SparsesearchError, match="latency"):
            LatencySettings(**bad)
    with pytest.raises(SparsesearchError, match="latency must be true, false or a table"):
        LatencySettings.from_mapping(3)


def test_ratios_are_against_the_dense_model_and_leave_the_models_as_they_were():
    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).train()
    small = torch.nn.Sequential(torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 10)).train()
    x = torch.randn(256, 64)
    threads = torch.get_num_threads()
    r = latency_ratios({"small": small}, dense, x, LatencySettings(rounds=2))
    assert set(r) == {"small"} and 0 < r["small"] and math.isfinite(r["small"])  # (no timing asserted)
    assert dense.training and small.training  # put back into training mode
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="'dense' is the reference's name"):
        latency_ratios({"dense": small}, dense, x, LatencySettings())


def test_of_finalists_within_validation_noise_the_faster_is_chosen():
    # 400 validation samples: one standard error at 0.95 is about 0.011
    slow, fast = _trial(0, 0.955, latency=0.9, loss=0.1), _trial(1, 0.950, latency=0.6, loss=0.3)
    assert choose_final([slow, fast], 400) is fast
    clearly_better = _trial(2, 0.99, latency=0.95)
    assert choose_final([slow, fast, clearly_better], 400) is clearly_better
    # without recorded latencies (a study that does not prefer latency): validation loss decides
    plain = [_trial(0, 0.955, loss=0.1), _trial(1, 0.950, loss=0.3)]
    assert choose_final(plain, 400) is plain[0]
    # latencies within 5 % of the fastest are the timing's noise: validation loss decides
    near = [_trial(0, 0.955, latency=0.62, loss=0.1), _trial(1, 0.950, latency=0.60, loss=0.3)]
    assert choose_final(near, 400) is near[0]
    assert choose_final([*near, _trial(2, 0.951, latency=0.66, loss=0.01)], 400) is near[0]


def test_a_study_without_finalists_keeps_the_faster_of_close_trials(tmp_path):
    from sparsesearch.search import best_trial

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(record.VAL_SIZE, 400)
    for val, lat in ((0.955, 0.9), (0.950, 0.5), (0.90, 0.1)):
        study.add_trial(optuna.trial.create_trial(value=val, user_attrs={
            record.PHASE: record.SCREEN, record.LATENCY: lat, record.VAL_LOSS: 0.2, record.PARAMS: 10}))
    assert best_trial(study).number == 1  # 0.90 is well below: not close, however fast
    plain = optuna.create_study(direction="maximize")
    plain.set_user_attr(record.VAL_SIZE, 400)
    for val in (0.950, 0.955):
        plain.add_trial(optuna.trial.create_trial(value=val, user_attrs={record.PARAMS: 10}))
    assert best_trial(plain).number == 1  # no latency recorded: the most accurate, as before


def test_the_screening_ranking_puts_the_fastest_of_the_close_trials_first():
    s = record.SCREEN
    a, b = _trial(0, 0.96, phase=s, latency=0.9), _trial(1, 0.955, phase=s, latency=0.5)
    c, d = _trial(2, 0.90, phase=s, latency=0.1), _trial(3, 0.92, phase=s, latency=0.2)
    assert screen_ranking([a, b, c, d], 400) == [b, a, d, c]  # c, d: well below, by accuracy
    assert screen_ranking([a, b, c, d]) == [a, b, d, c]  # no validation size: only exact ties are close
    plain = [_trial(0, 0.955, phase=s), _trial(1, 0.96, phase=s)]
    assert screen_ranking(plain, 400) == [plain[1], plain[0]]


def test_a_latency_preferring_study_seeds_with_its_fastest_timed_allocations(tmp_path):
    heuristics = ["uniform", "lamp", "erk"]
    r = sparsesearch.search(
        "digits-cnn", "digits", 0.3, strategies=["l1-filter"], n_trials=4, heuristics=heuristics,
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="fast", runs_dir=tmp_path / "runs",
        dense={"epochs": 3, "lr": 0.1, "optimizer": "sgd"}, space={"lr": 0.01, "epochs": 1},
        compute={"epochs": 4, "final_share": 0.0}, latency=FAST,  # screening only: every seed trains
    )
    timed = r.study.user_attrs[record.LATENCY_CANDIDATES]
    lats = [c["latency"] for c in timed]
    assert lats == sorted(lats) and all(v > 0 and math.isfinite(v) for v in lats)
    # each heuristic at the family's temperatures 0, 0.5 and 1 (the same allocation timed once)
    assert {c["temperature"] for c in timed} <= {0.0, 0.5, 1.0}
    assert {c["heuristic"] for c in timed} <= set(heuristics) and len(timed) >= 2
    assert r.study.user_attrs[record.SEEDS_ENQUEUED] == min(len(heuristics), len(timed))
    seeds = [t for t in r.study.trials if t.user_attrs.get(record.SEED_TRIAL)]
    assert len(seeds) == min(len(heuristics), len(timed))
    for t, c in zip(sorted(seeds, key=lambda t: t.number), timed):  # fastest first
        assert (t.params["alloc:heuristic"], t.params["alloc:temperature"]) == (c["heuristic"], c["temperature"])
    trained = [t for t in r.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trained) >= len(seeds)
    for t in trained:  # every trial times its compacted model, and meets its budget (the
        # allocations are the plan's, whose filling tests/test_groups.py asserts)
        assert 0 < t.user_attrs[record.LATENCY] and math.isfinite(t.user_attrs[record.LATENCY])
        assert t.user_attrs[record.PARAMS] <= r.budget_params
    # screening only (no finalist): the chosen trial is the fastest of those validation cannot
    # tell from the best
    chosen = fastest(close_to_best(trained, r.study.user_attrs[record.VAL_SIZE]))
    assert r.best_trial.number in {t.number for t in chosen}
    assert f"latency {r.latency:.2f}x dense (batch 8, measured)" in r.summary()
    # the preference is part of the study's problem: resuming without it is refused, in one line
    with pytest.raises(SparsesearchError, match=r"holds another problem \(latency: stored"):
        sparsesearch.search(
            "digits-cnn", "digits", 0.3, strategies=["l1-filter"], heuristics=heuristics,
            storage=f"sqlite:///{tmp_path / 's.db'}", study_name="fast", runs_dir=tmp_path / "runs",
            dense={"epochs": 3, "lr": 0.1, "optimizer": "sgd"}, space={"lr": 0.01, "epochs": 1},
            compute={"epochs": 4, "final_share": 0.0})


def test_latency_preference_is_refused_where_it_cannot_work(tmp_path):
    kw = dict(storage=f"sqlite:///{tmp_path / 's.db'}", runs_dir=tmp_path / "runs", latency=True)
    with pytest.raises(SparsesearchError, match="needs channel strategies.*magnitude"):
        sparsesearch.search("digits-mlp", "digits", 0.3, strategies=["magnitude"], **kw)
    with pytest.raises(SparsesearchError, match="needs objective='accuracy'"):
        sparsesearch.search("digits-cnn", "digits", [0.1, 0.3], strategies=["l1-filter"],
                            objective="pareto", **kw)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("dense-*.pt"))


def test_the_study_file_table_reaches_search(tmp_path):
    from sparsesearch.config import ConfigError, load_study_config

    base = '[model]\nname = "digits-cnn"\n[data]\nname = "digits"\n[budget]\nfraction = 0.3\n'
    path = tmp_path / "s.toml"
    path.write_text(base + "[latency]\nprefer = true\nbatch = 16\n")
    assert load_study_config(path).search_kwargs(runs_dir=tmp_path)["latency"] == LatencySettings(batch=16)
    path.write_text(base)
    assert load_study_config(path).search_kwargs(runs_dir=tmp_path)["latency"] is None
    path.write_text(base + "[latency]\nbach = 16\n")
    with pytest.raises(ConfigError, match="latency.bach.*did you mean 'latency.batch'"):
        load_study_config(path)
