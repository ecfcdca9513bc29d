"""The search engine: budget by construction, heuristic seeds, compute budget, fidelity
ladder and finalists, determinism, resume, bad input."""

from __future__ import annotations

import logging
import math

import optuna
import pytest
import torch

import sparsesearch
from sparsesearch import count_params
from sparsesearch.errors import BudgetError, NoCompleteTrialError, SparsesearchError, StrategyError
from sparsesearch.masks import get_mask
from sparsesearch.recipe import Recipe

DENSE = {"epochs": 6, "lr": 0.1, "optimizer": "sgd"}
SPACE = {"lr": [1e-3, 2e-2], "epochs": 3}
COMPUTE = {"epochs": 40, "final_share": 0.5, "finalists": 2, "final_lr_scales": [1.0]}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One runs dir for the module, so the dense model is trained once and then cached."""
    return tmp_path_factory.mktemp("runs")


def _search(tmp_path, name="t", runs=None, **kw):
    args = dict(
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name=name,
        dense=DENSE, space=SPACE, compute=COMPUTE, runs_dir=runs or tmp_path / "runs", seed=0,
    )
    args.update(kw)
    return sparsesearch.search(args.pop("model", "digits-mlp"), "digits", args.pop("budget", 0.08), **args)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return _search(tmp_path_factory.mktemp("search"))


def test_every_complete_trial_meets_the_budget(result):
    budget = result.study.user_attrs["budget_params"]
    assert budget == math.floor(0.08 * result.total_params)
    complete = result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) >= 4
    for t in complete:
        assert t.user_attrs["params"] <= budget
        # the stored per-layer sparsity reproduces the count
        assert set(t.user_attrs["sparsity"]) == {"1", "3", "5"}


def test_compute_budget_is_never_exceeded_and_recorded(result):
    trials = result.study.trials
    spent = sum(t.user_attrs.get("epochs", 0) for t in trials)
    assert result.study.user_attrs["epochs_trained"] == spent == result.epochs_trained
    assert spent <= COMPUTE["epochs"]
    screen = sum(t.user_attrs.get("epochs", 0) for t in trials if t.user_attrs.get("phase") != "final")
    assert screen <= COMPUTE["epochs"] * (1 - COMPUTE["final_share"])
    assert result.study.user_attrs["compute"]["epochs"] == COMPUTE["epochs"]
    for t in trials:
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            assert isinstance(t.user_attrs["epochs"], int)


def test_screening_is_pruned_by_successive_halving(result):
    screen = [t for t in result.study.trials if t.user_attrs.get("phase") == "screen"]
    assert any(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["epochs"] < 3 for t in screen)
    assert all(t.user_attrs["epochs"] <= 3 for t in screen)
    # a pruned trial that trained records what its masks keep, as a complete one does
    for t in screen:
        if t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["epochs"] >= 1:
            assert t.user_attrs["params"] <= result.budget_params and t.user_attrs["macs"] > 0


def test_finalists_are_the_best_screened_and_the_result_is_one_of_them(result):
    study = result.study
    finals = [t for t in study.trials if t.user_attrs.get("phase") == "final"]
    assert len(finals) == COMPUTE["finalists"]
    ranked = sorted((t for t in study.trials if t.user_attrs.get("phase") == "screen"
                     and t.state == optuna.trial.TrialState.COMPLETE),
                    key=lambda t: (-t.value, t.user_attrs["val_loss"], t.number))
    assert [t.user_attrs["finalist_of"] for t in finals] == [t.number for t in ranked[:2]]
    for f in finals:
        src = study.trials[f.user_attrs["finalist_of"]]
        assert f.params == src.params  # the same candidate, retrained
        assert f.user_attrs["sparsity"] == src.user_attrs["sparsity"]
        assert f.user_attrs["epochs"] == int(COMPUTE["epochs"] * COMPUTE["final_share"] / 2)
        assert f.user_attrs["recipe"]["retrain"]["schedule"] == "gradual"
        assert f.user_attrs["recipe"]["retrain"]["prune_steps"] > 1
    assert result.best_trial.user_attrs["phase"] == "final"
    assert study.user_attrs["final_trial"] == result.best_trial.number
    assert result.best_trial.number in [f.number for f in finals]


def test_seed_trials_params_reproduce_their_allocation(result):
    """A seed's stored parameters (heuristic, temperature 1) give exactly the allocation that
    ran: the sampler learns from what ran."""
    from sparsesearch.budget import plan_budget
    from sparsesearch.layers import find_layers
    from sparsesearch.plugins import get_strategy
    from sparsesearch.score import compute_scores

    dense = result.dense_model
    layers = find_layers(dense)
    plan = plan_budget(dense, layers, 0.08)
    splits = sparsesearch.load_dataset("digits", seed=0)
    scores = compute_scores(dense, layers, get_strategy("magnitude").strategy, data=splits.train, seed=0)
    seeds = [t for t in result.study.trials if t.user_attrs.get("heuristic")
             and t.user_attrs.get("phase") == "screen" and "sparsity" in t.user_attrs]
    assert len(seeds) >= 3
    for t in seeds:
        assert t.params["alloc:heuristic"] == t.user_attrs["heuristic"]
        assert t.params["alloc:temperature"] == 1.0
        keep = plan.heuristic(t.params["alloc:heuristic"], scores)
        expected = {k: round(v, 8) for k, v in plan.to_sparsity(keep).items()}
        assert t.user_attrs["sparsity"] == expected


def test_best_model_is_pruned_permanent_and_counted(result):
    model = result.model
    assert not any(get_mask(m) is not None for m in model.modules())
    counts = count_params(model)
    assert counts.remaining == result.params <= result.budget_params
    # per-layer sparsity of the returned model is exactly the recipe's
    for name, amount in result.recipe.sparsity.items():
        w = dict(model.named_modules())[name].weight
        assert int((w == 0).sum()) == round(amount * w.numel())


def test_test_accuracy_only_for_the_best_trial(result):
    stored = result.study.user_attrs["test_accuracy"]
    assert list(stored) == [str(result.best_trial.number)]
    assert stored[str(result.best_trial.number)] == pytest.approx(result.test_accuracy)
    assert all("test_accuracy" not in t.user_attrs for t in result.study.trials)


def test_user_attrs_are_the_documented_contract(result):
    for t in result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert isinstance(t.user_attrs["params"], int)
        assert isinstance(t.user_attrs["sparsity"], dict)
        assert t.user_attrs["strategy"] == "magnitude"
        assert "heuristic" in t.user_attrs


def test_recipe_replays_to_the_same_model(result):
    recipe = Recipe.from_json(result.recipe.to_json())
    replay = sparsesearch.apply_recipe(result.dense_model, recipe, "digits")
    sparsesearch.make_permanent(replay)
    for (n1, p1), (n2, p2) in zip(result.model.state_dict().items(), replay.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6)


def test_masks_hold_after_fine_tuning(result):
    recipe = result.recipe
    model = sparsesearch.apply_recipe(result.dense_model, recipe, "digits")
    for name, amount in recipe.sparsity.items():
        module = dict(model.named_modules())[name]
        mask = get_mask(module)
        assert mask is not None
        assert torch.all(module.weight[mask == 0] == 0)
        assert int((module.weight == 0).sum()) >= round(amount * module.weight.numel())


def test_same_seed_same_trials(tmp_path):
    # 4 seeds, then TPE proposals; separate runs dirs so nothing is shared but the seed
    kw = dict(n_trials=7, heuristics=["uniform", "lamp"], runs=None)
    a = _search(tmp_path / "a", name="a", storage=f"sqlite:///{tmp_path / 'a.db'}", **kw)
    b = _search(tmp_path / "b", name="b", storage=f"sqlite:///{tmp_path / 'b.db'}", **kw)
    ta, tb = a.study.trials, b.study.trials
    assert [t.params for t in ta] == [t.params for t in tb]
    assert [t.state for t in ta] == [t.state for t in tb]
    assert [t.values for t in ta] == [t.values for t in tb]


def test_resume_after_an_interruption_keeps_the_accounting(tmp_path, runs_dir):
    def interrupt(study, trial):
        if trial.number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, name="r", runs=runs_dir, callbacks=[interrupt])
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert not any(t.user_attrs.get("phase") == "final" for t in study.trials)
    again = _search(tmp_path, name="r", runs=runs_dir)
    trials = again.study.trials
    # the 4 heuristic seeds were enqueued once, the finalists once, the budget held overall
    assert sum(1 for t in trials if t.user_attrs.get("heuristic") and t.user_attrs.get("phase") != "final") == 4
    assert sum(1 for t in trials if t.user_attrs.get("phase") == "final") == COMPUTE["finalists"]
    assert again.epochs_trained == sum(t.user_attrs.get("epochs", 0) for t in trials) <= COMPUTE["epochs"]
    # a third call adds nothing: the study is complete
    third = _search(tmp_path, name="r", runs=runs_dir)
    assert len(third.study.trials) == len(trials)
    assert third.best_trial.number == again.best_trial.number


def test_resume_with_another_problem_is_refused_before_any_work(tmp_path, runs_dir):
    _search(tmp_path, name="c", runs=runs_dir, n_trials=1, compute={**COMPUTE, "epochs": 10})
    with pytest.raises(SparsesearchError, match=r"holds another problem \(compute.epochs: stored 10, now 40\)"):
        _search(tmp_path, name="c", runs=runs_dir, n_trials=1)
    # a setting deep in a table is named, not hidden in a cut-off dump of the table
    with pytest.raises(SparsesearchError, match=r"space.epochs: stored 3, now 4"):
        _search(tmp_path, name="c", runs=runs_dir, n_trials=1, compute={**COMPUTE, "epochs": 10},
                space={**SPACE, "epochs": 4})
    # another seed: refused before a new dense model is trained (none is written)
    dense_files = sorted((runs_dir / "c").glob("dense-*.pt"))
    with pytest.raises(SparsesearchError, match=r"holds another problem \(seed: stored 0, now 7"):
        _search(tmp_path, name="c", runs=runs_dir, n_trials=1, seed=7, compute={**COMPUTE, "epochs": 10})
    assert sorted((runs_dir / "c").glob("dense-*.pt")) == dense_files
    # the default study name does not silently mix two problems either
    with pytest.raises(SparsesearchError, match=r"holds another problem \(model: stored"):
        sparsesearch.search("digits-cnn", "digits", 0.08, storage=f"sqlite:///{tmp_path / 'study.db'}",
                            study_name="c", runs_dir=runs_dir, dense=DENSE, space=SPACE,
                            compute={**COMPUTE, "epochs": 10}, n_trials=1)


def test_a_study_made_before_an_option_existed_resumes_at_its_default(tmp_path, runs_dir):
    """An option added later (here space.channel_multiple) is missing from an older study's
    stored identity: that study ran as the option's default, so it resumes; another value is
    refused naming it."""
    from sparsesearch import record

    first = _search(tmp_path, name="old", runs=runs_dir, n_trials=1, compute={**COMPUTE, "epochs": 10})
    identity = first.study.user_attrs[record.IDENTITY]
    del identity["space"]["channel_multiple"]  # as sparsesearch wrote it before the option
    first.study.set_user_attr(record.IDENTITY, identity)
    again = _search(tmp_path, name="old", runs=runs_dir, n_trials=1, compute={**COMPUTE, "epochs": 10})
    assert len(again.study.trials) >= len(first.study.trials)
    with pytest.raises(SparsesearchError, match=r"space.channel_multiple: stored 1, now 8"):
        _search(tmp_path, name="old", runs=runs_dir, n_trials=1, compute={**COMPUTE, "epochs": 10},
                space={**SPACE, "channel_multiple": 8})


def test_budgets_that_cannot_work_are_refused_before_training(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(BudgetError, match="feasible minimum"):
        _search(tmp_path, name="small", budget=10, runs=runs)
    with pytest.raises(BudgetError, match="not below the model's 6570"):
        _search(tmp_path, name="large", budget=100_000_000, runs=runs)
    assert not list(runs.rglob("dense-*.pt"))  # no dense model was trained
    for bad in (-1, float("nan"), float("inf"), 0):
        with pytest.raises(SparsesearchError, match="timeout must be"):
            _search(tmp_path, name="t", timeout=bad, runs=runs)


def test_pareto_front(tmp_path, runs_dir):
    r = _search(tmp_path, name="p", objective="pareto", n_trials=4, runs=runs_dir, heuristics=["uniform", "erk"])
    assert r.study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert r.pareto_front
    for t in r.pareto_front:
        assert t.values[1] <= r.budget_params


def test_infeasible_budget_names_the_minimum(tmp_path, runs_dir):
    with pytest.raises(BudgetError, match=r"feasible minimum is \d+"):
        _search(tmp_path, budget=10, runs=runs_dir)


def test_unknown_strategy_before_any_work(tmp_path):
    with pytest.raises(StrategyError, match="known strategies"):
        _search(tmp_path, strategies=["nope"])
    assert not (tmp_path / "study.db").exists()


def test_empty_search_space(tmp_path):
    with pytest.raises(SparsesearchError, match="heuristics is empty"):
        _search(tmp_path, space={"allocation": False}, heuristics=[])


@pytest.mark.parametrize("kw, said", [({"strategies": 3}, "strategies must be a strategy name"),
                                      ({"heuristics": [1]}, "heuristics must be a list of names")])
def test_a_strategies_or_heuristics_argument_of_the_wrong_type_is_one_line(tmp_path, kw, said):
    with pytest.raises(SparsesearchError, match=said):
        _search(tmp_path, **kw)


def test_the_callers_module_is_left_as_given_and_the_same_call_resumes(tmp_path, runs_dir):
    torch.manual_seed(0)
    mine = sparsesearch.build_model("digits-mlp", num_classes=10)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    kw = dict(heuristics=["uniform"], compute={"epochs": 8, "finalists": 0}, space={"epochs": 1})
    first = _search(tmp_path, name="mine", model=mine, **kw)
    assert all(torch.equal(before[k], v) for k, v in mine.state_dict().items())  # not trained here
    again = _search(tmp_path, name="mine", model=mine, **kw)  # same problem: resumed, not refused
    assert again.best_trial.number == first.best_trial.number


class _CtrlCAt(logging.Handler):
    """Raises KeyboardInterrupt from fit's per-epoch record of a training of ``epochs`` epochs
    at its ``at``-th epoch: Ctrl-C exactly there, without a signal race."""

    def __init__(self, epochs, at):
        super().__init__(logging.DEBUG)
        self.epochs, self.at, self.fired = epochs, at, False

    def emit(self, record):
        info = getattr(record, "sparsesearch_epoch", None)
        if not self.fired and info and info["epochs"] == self.epochs and info["epoch"] == self.at:
            self.fired = True
            raise KeyboardInterrupt


def _interrupted_search(tmp_path, *, epochs, at, **kw):
    """``_search`` stopped by Ctrl-C at that epoch of that training (see :class:`_CtrlCAt`)."""
    train_log = logging.getLogger("sparsesearch.train")
    stop = _CtrlCAt(epochs, at)
    train_log.addHandler(stop)
    level, train_log.level = train_log.level, logging.DEBUG
    try:
        with pytest.raises(KeyboardInterrupt):
            _search(tmp_path, **kw)
    finally:
        train_log.removeHandler(stop)
        train_log.setLevel(level)
    assert stop.fired


def test_a_finalist_stopped_by_ctrl_c_trains_again_when_the_study_is_resumed(tmp_path, runs_dir):
    kw = dict(name="resume-final", runs=runs_dir, heuristics=["uniform", "lamp"],
              compute={"epochs": 20, "final_share": 0.5, "finalists": 1}, space={"epochs": 2})
    _interrupted_search(tmp_path, epochs=10, at=2, **kw)  # the finalist's second epoch
    r = _search(tmp_path, **kw)  # the resume: the finalist is queued again and trains in full
    finals = [t for t in r.study.trials if t.user_attrs.get("phase") == "final"]
    assert [t.state for t in finals] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert finals[1].user_attrs["retry_of"] == finals[0].number and finals[1].user_attrs["epochs"] == 10
    assert r.best_trial.number == finals[1].number  # the result is the finalist, not a screened trial


def test_a_heuristic_seed_stopped_by_ctrl_c_is_queued_again_on_resume(tmp_path, runs_dir):
    kw = dict(name="resume-seed", runs=runs_dir, heuristics=["uniform", "lamp"],
              compute={"epochs": 12, "finalists": 0}, space={"epochs": 2})
    _interrupted_search(tmp_path, epochs=2, at=1, **kw)  # the first seed's first epoch
    r = _search(tmp_path, **kw)
    first = r.study.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["heuristic"] == "uniform"
    (again,) = [t for t in r.study.trials if t.user_attrs.get("retry_of") == first.number]
    assert again.params == first.params and again.user_attrs["seed_trial"] is True
    assert again.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def test_unknown_space_key_suggests(tmp_path):
    with pytest.raises(SparsesearchError, match="did you mean 'epochs'"):
        _search(tmp_path, space={"epochz": 3})


def test_nan_loss_fails_only_that_trial(tmp_path, runs_dir):
    # an lr this large blows up SGD: every trial fails with the reason stored, the study goes on
    with pytest.raises(SparsesearchError, match="no COMPLETE trial") as err:
        _search(tmp_path, name="nan", n_trials=3, runs=runs_dir,
                space={"lr": 1e12, "epochs": 1, "optimizer": "sgd"})
    # the error says why: the trials' shared fail_reason, and keeps the first one's traceback
    assert "3 of 3 trials failed, all with: NonFiniteLossError" in str(err.value)
    assert err.value.trial == 0 and "Traceback" in err.value.trial_traceback
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'study.db'}")
    finished = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    assert len(finished) == 3
    assert all(t.state == optuna.trial.TrialState.FAIL for t in finished)
    assert all("NonFiniteLossError" in t.user_attrs["fail_reason"] for t in finished)


def test_trials_that_keep_failing_end_the_study_instead_of_running_forever(tmp_path, runs_dir):
    # failed trials spend no compute: without a stop the study would add FAIL trials forever
    with pytest.raises(NoCompleteTrialError, match="5 of 5 trials failed, all with: NonFiniteLossError"):
        _search(tmp_path, name="forever", runs=runs_dir, n_trials=None, heuristics=["uniform"],
                space={"lr": 1e12, "epochs": 1, "optimizer": "sgd"})
    study = optuna.load_study(study_name="forever", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) == 5


class Exploding(sparsesearch.Strategy):
    name = "exploding"

    def score(self, layer, context):
        raise RuntimeError("boom")


def test_strategy_that_raises_fails_only_its_trial(tmp_path, runs_dir):
    sparsesearch.plugins.register_plugin(
        type("P", (), {"sparsesearch_register_strategies": staticmethod(
            sparsesearch.hookimpl(lambda register: register(Exploding())))})(), name="exploding-test")
    try:
        r = _search(tmp_path, name="x", n_trials=6, runs=runs_dir, strategies=["magnitude", "exploding"],
                    heuristics=["uniform"], space={**SPACE, "heuristic_lrs": [0.1]})
        failed = [t for t in r.study.trials if t.state == optuna.trial.TrialState.FAIL]
        ok = [t for t in r.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert ok
        for t in failed:
            assert t.params["strategy"] == "exploding"
            assert "boom" in t.user_attrs["traceback"]
    finally:
        sparsesearch.plugins.reset_plugins()


def test_structured_trials_are_counted_compacted(tmp_path, runs_dir):
    from sparsesearch.compact import compact

    r = sparsesearch.search(
        "digits-cnn", "digits", 0.3, strategies=["l1-filter"], n_trials=3,
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="structured", runs_dir=runs_dir,
        dense={"epochs": 3, "lr": 0.1, "optimizer": "sgd"}, space={"lr": 0.01, "epochs": 1}, compute=8,
        heuristics=["uniform", "lamp"],
    )
    complete = r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete
    for t in complete:
        assert t.user_attrs["params"] <= r.budget_params
        assert t.user_attrs["macs"] > 0
    train = sparsesearch.load_dataset("digits").train
    x = torch.stack([train[0][0], train[1][0]])
    small = compact(r.model, example_input=x).model
    assert sum(p.numel() for p in small.parameters()) == r.params
    assert r.params < count_params(r.dense_model).total


def test_channel_multiple_keeps_every_structured_trial_in_blocks(tmp_path, runs_dir):
    from sparsesearch.compact import compact

    r = sparsesearch.search(
        "digits-cnn", "digits", 0.4, strategies=["l1-filter"], n_trials=3,
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="blocks", runs_dir=runs_dir,
        dense={"epochs": 3, "lr": 0.1, "optimizer": "sgd"},
        space={"lr": 0.01, "epochs": 1, "channel_multiple": 8}, compute=8, heuristics=["uniform", "lamp"],
    )
    sizes = {"features.0": 16, "features.2": 32, "classifier.1": 64}
    complete = r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete
    for t in complete:
        assert t.user_attrs["params"] <= r.budget_params
        for name, units in sizes.items():
            kept = units - round(t.user_attrs["sparsity"][name] * units)
            assert kept % 8 == 0 and kept > 0, (t.number, name, kept)
    train = sparsesearch.load_dataset("digits").train
    small = compact(r.model, example_input=torch.stack([train[0][0], train[1][0]])).model
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths and all(w % 8 == 0 for w in widths), widths
    with pytest.raises(SparsesearchError, match="channel_multiple must be an int >= 1"):
        sparsesearch.SearchSpace(channel_multiple=0)


def test_mac_budget_is_met_by_every_trial(tmp_path, runs_dir):
    from sparsesearch.macs import count_macs

    r = sparsesearch.search(
        "digits-cnn", "digits", 0.25, budget_metric="macs", n_trials=4,
        storage=f"sqlite:///{tmp_path / 'm.db'}", study_name="macs", runs_dir=runs_dir,
        dense={"epochs": 3, "lr": 0.1, "optimizer": "sgd"}, space={"lr": 0.01, "epochs": 1}, compute=8,
        heuristics=["uniform", "erk"],
    )
    train = sparsesearch.load_dataset("digits").train
    x = torch.stack([train[0][0], train[1][0]])
    total = count_macs(r.dense_model, x)
    attrs = r.study.user_attrs
    assert attrs["budget_metric"] == "macs" and attrs["total_macs"] == total
    assert attrs["budget_macs"] == math.floor(0.25 * total) == r.budget_params
    complete = r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) >= 3 and complete[-1].user_attrs["phase"] == "final"
    for t in complete:
        assert t.user_attrs["macs"] <= attrs["budget_macs"]
    assert count_macs(r.model, x, nonzero=True) <= attrs["budget_macs"]
    summary = r.summary()
    assert f"(budget {attrs['budget_macs']} MACs)" in summary and f"/{total} per sample" in summary
    # a study searched from Python (no stored study file) is rebuilt with its MAC budget, not 1
    from sparsesearch.export import config_from_study

    cfg = config_from_study(r.study)
    assert cfg.budget_metric == "macs" and cfg.budget == 0.25


def test_model_that_does_not_fit_the_data_is_one_clear_error(tmp_path, runs_dir):
    with pytest.raises(SparsesearchError, match=r"fails on 'digits' inputs of shape \(1, 8, 8\)"):
        sparsesearch.search(torch.nn.Linear(3, 2), "digits", 0.5, n_trials=1,
                            storage=f"sqlite:///{tmp_path / 'f.db'}", runs_dir=runs_dir)
    with pytest.raises(SparsesearchError, match=r"expected \(batch, 10\) class scores"):
        sparsesearch.search(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), "digits",
                            0.5, n_trials=1, storage=f"sqlite:///{tmp_path / 'g.db'}", runs_dir=runs_dir)


def test_the_final_learning_rate_is_rechosen_at_full_fidelity(tmp_path, runs_dir):
    r = _search(tmp_path, name="lrs", runs=runs_dir, compute={"epochs": 24, "final_share": 0.6,
                                                              "final_lr_scales": [1.0, 1 / 3]})
    finals = [t for t in r.study.trials if t.user_attrs.get("phase") == "final"]
    assert [t.user_attrs["lr_scale"] for t in finals] == pytest.approx([1.0, 1 / 3])
    src = r.study.trials[finals[0].user_attrs["finalist_of"]]
    assert {t.user_attrs["finalist_of"] for t in finals} == {src.number}
    for t in finals:
        assert t.user_attrs["recipe"]["retrain"]["lr"] == pytest.approx(src.params["lr"] * t.user_attrs["lr_scale"])
        assert t.user_attrs["epochs"] == int(24 * 0.6 / 2)
    assert r.best_trial in finals


def test_a_dense_model_at_chance_level_is_warned_about(tmp_path, caplog):
    import logging

    torch.manual_seed(0)
    untrained = sparsesearch.build_model("digits-mlp", num_classes=10)
    with torch.no_grad():
        for p in untrained.parameters():
            p.zero_()  # constant outputs: exactly chance level
    with caplog.at_level(logging.WARNING, logger="sparsesearch"):
        r = _search(tmp_path, name="chance", model=untrained, trained=True, n_trials=1,
                    compute={"epochs": 4, "finalists": 0})
    assert any("at chance level on validation" in rec.getMessage() for rec in caplog.records)
    assert r.study.metric_names == ["val_accuracy"]


def test_seed_scoring_that_raises_leaves_out_only_its_seeds(tmp_path, runs_dir, caplog):
    import logging

    sparsesearch.plugins.register_plugin(
        type("P", (), {"sparsesearch_register_strategies": staticmethod(
            sparsesearch.hookimpl(lambda register: register(Exploding())))})(), name="exploding-seed")
    try:
        with caplog.at_level(logging.WARNING, logger="sparsesearch"):
            r = _search(tmp_path, name="xs", runs=runs_dir, strategies=["exploding", "magnitude"],
                        heuristics=["lamp", "uniform"], n_trials=4,
                        space={**SPACE, "allocation": "layers"}, compute={"epochs": 12, "finalists": 0})
        msgs = [rec.getMessage() for rec in caplog.records]
        assert any("seed trials are left out" in m and "exploding" in m and "boom" in m for m in msgs)
        seeds = [t for t in r.study.trials if t.user_attrs.get("heuristic")]
        assert {t.user_attrs["heuristic"] for t in seeds} == {"uniform"}
    finally:
        sparsesearch.plugins.reset_plugins()


@pytest.mark.parametrize("epochs", [7, 13.5])
def test_the_compute_budget_holds_exactly_with_awkward_numbers(tmp_path, runs_dir, epochs):
    r = _search(tmp_path, name=f"awk{epochs}", runs=runs_dir, compute={"epochs": epochs})
    trials = r.study.trials
    final = [t for t in trials if t.user_attrs.get("phase") == "final"]
    # 7 epochs at the default share (0.8) would leave the screening 2, less than one 3-epoch
    # trial: the finalist gets 4 and the screening 3 (one trial completes); 13.5 leaves it 3
    assert len(final) == 1 and final[0].user_attrs["epochs"] == {7: 4, 13.5: 10}[epochs]
    assert any(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("phase") != "final"
               for t in trials)
    assert sum(t.user_attrs.get("epochs", 0) for t in trials) <= epochs
    assert r.epochs_trained <= epochs


def test_the_score_cache_key_follows_the_strategy_code():
    """A changed score() gets fresh scores on resume: the cache key holds the distribution,
    its version and a hash of the strategy class's source."""
    from sparsesearch.search import _strategy_version

    class V1(sparsesearch.Strategy):
        name = "versioned"

        def score(self, layer, context):
            return layer.weight.abs()

    class V2(sparsesearch.Strategy):
        name = "versioned"

        def score(self, layer, context):
            return layer.weight.abs() + 1

    keys = []
    for cls in (V1, V2, V1):
        sparsesearch.plugins.register_plugin(
            type("P", (), {"sparsesearch_register_strategies": staticmethod(
                sparsesearch.hookimpl(lambda register, cls=cls: register(cls())))})(), name="versioned")
        try:
            keys.append(_strategy_version("versioned"))
        finally:
            sparsesearch.plugins.reset_plugins()
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert _strategy_version("magnitude")[0] == "sparsesearch"


class Knob(sparsesearch.Strategy):
    name = "knob"
    seen: list = []

    def score(self, layer, context):
        Knob.seen.append(dict(context.params))
        return layer.weight.abs() * context.params["knob:alpha"]


class KnobPlugin:
    @sparsesearch.hookimpl
    def sparsesearch_register_strategies(self, register):
        register(Knob())

    @sparsesearch.hookimpl
    def sparsesearch_suggest_params(self, strategy, trial):
        if strategy != "knob":
            return None
        return {"knob:alpha": trial.suggest_float("knob:alpha", 0.0, 1.0),
                "knob:mode": trial.suggest_categorical("knob:mode", ["a", "b", "c"]),
                "knob:steps": trial.suggest_int("knob:steps", 1, 10)}


def test_strategy_params_fix_and_narrow_a_plugins_hyperparameters(tmp_path, runs_dir):
    sparsesearch.plugins.register_plugin(KnobPlugin(), name="knob-plugin")
    try:
        Knob.seen.clear()
        r = _search(tmp_path, name="knob", runs=runs_dir, strategies=["knob"], n_trials=5,
                    compute={"epochs": 12},
                    strategy_params={"knob": {"knob:alpha": 0.25, "knob:mode": ["a", "b"],
                                              "knob:steps": [2, 3]}})
        done = [t for t in r.study.trials if "recipe" in t.user_attrs]
        assert done
        for t in done:
            p = t.user_attrs["recipe"]["strategy_params"]
            assert p["knob:alpha"] == 0.25 and p["knob:mode"] in ("a", "b") and 2 <= p["knob:steps"] <= 3
        assert Knob.seen and all(s["knob:alpha"] == 0.25 for s in Knob.seen)
        with pytest.raises(SparsesearchError, match="no COMPLETE trial"):
            _search(tmp_path, name="knob2", runs=runs_dir, strategies=["knob"], n_trials=2,
                    compute={"epochs": 12, "finalists": 0}, strategy_params={"knob": {"knob:beta": 1}})
        study = optuna.load_study(study_name="knob2", storage=f"sqlite:///{tmp_path / 'study.db'}")
        assert all("strategy_params.knob.knob:beta: strategy 'knob' has no such hyperparameter"
                   in t.user_attrs["fail_reason"] for t in study.trials if t.state == optuna.trial.TrialState.FAIL)
        with pytest.raises(SparsesearchError, match="not among the strategies"):
            _search(tmp_path, name="knob3", runs=runs_dir, strategy_params={"other": {"x": 1}})
    finally:
        sparsesearch.plugins.reset_plugins()


def test_a_pareto_study_over_a_budget_range_spans_the_front(tmp_path, runs_dir):
    r = _search(tmp_path, name="front", runs=runs_dir, objective="pareto", budget=(0.03, 0.5),
                n_trials=10, compute={"epochs": 100})
    lo, hi = r.study.user_attrs["budget_range"]
    assert lo == math.floor(0.03 * 6570) and hi == math.floor(0.5 * 6570)
    complete = r.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    sizes = {t.user_attrs["params"] for t in complete}
    assert len(sizes) >= 5  # not a vertical strip at one size
    for t in complete:
        assert lo <= t.params["budget"] <= hi
        assert t.user_attrs["params"] <= t.params["budget"]  # each trial meets its own budget
        assert t.values[1] == t.user_attrs["params"]
    seeds = sorted(t.params["budget"] for t in r.study.trials if t.user_attrs.get("heuristic"))
    assert seeds[0] == lo and seeds[-1] == hi  # the seeds spread over the range
    assert len({t.user_attrs["params"] for t in r.pareto_front}) >= 2
    # an exported point is measured against its own budget, not the range's top
    from sparsesearch.export import export_trial

    small = min(complete, key=lambda t: t.params["budget"])
    out = export_trial(r.study, tmp_path / "small.pt", trial=small.number, runs_dir=runs_dir)
    assert out.budget == small.params["budget"] < hi and out.budget_count <= out.budget
    with pytest.raises(SparsesearchError, match="needs objective='pareto'"):
        _search(tmp_path, name="front2", runs=runs_dir, budget=(0.03, 0.5))


def test_screening_only_when_no_share_is_left_for_finalists(tmp_path, runs_dir):
    r = _search(tmp_path, name="screen-only", runs=runs_dir, n_trials=3,
                compute={"epochs": 9, "final_share": 0.0})
    assert not any(t.user_attrs.get("phase") == "final" for t in r.study.trials)
    assert r.best_trial.user_attrs["phase"] == "screen" and r.epochs_trained <= 9


def test_a_trial_writes_its_attributes_in_one_storage_call(tmp_path, runs_dir, monkeypatch):
    # per trial: its user attributes go with its final state in one write (the default SQLite
    # storage holds them), at most one more write when its training starts, and no study
    # attribute (epochs_trained is written when the run ends), however many trials run
    from sparsesearch.storage import _RDBStorage

    calls = {"trial_batch": 0, "trial_key": 0, "study": 0, "write": 0, "final": 0}

    def counter(name, original):
        def counted(self, *a, **k):
            calls[name] += 1
            if name == "write" and k.get("state") is not None:
                calls["final"] += 1
                assert k["user_attrs"]["phase"] in ("screen", "final")
            return original(self, *a, **k)
        return counted

    monkeypatch.setattr(_RDBStorage, "set_trial_user_attrs", counter("trial_batch", _RDBStorage.set_trial_user_attrs))
    monkeypatch.setattr(_RDBStorage, "set_trial_user_attr", counter("trial_key", _RDBStorage.set_trial_user_attr))
    monkeypatch.setattr(_RDBStorage, "write_trial", counter("write", _RDBStorage.write_trial))
    for name in ("set_study_user_attr", "set_study_user_attrs"):
        monkeypatch.setattr(_RDBStorage, name, counter("study", getattr(_RDBStorage, name)))
    r = _search(tmp_path, name="writes", runs=runs_dir, n_trials=6, heuristics=["uniform"],
                compute={"epochs": 24, "final_share": 0.25})
    trials = r.study.get_trials(deepcopy=False)
    assert len(trials) == 7  # six screened, one finalist
    assert calls["trial_batch"] == 0 and calls["trial_key"] == 0
    assert calls["final"] == len(trials) and calls["write"] <= 2 * len(trials)
    # set-up (one batch), seeds_enqueued, finals_enqueued, epochs_trained, the result (one batch)
    assert calls["study"] == 5
    assert r.study.user_attrs["epochs_trained"] == sum(t.user_attrs["epochs"] for t in trials)


def test_every_parameter_the_search_suggests_is_reserved_from_plugins(result):
    """plugins.RESERVED_PARAMS (the names a strategy plugin may not suggest) must cover what
    the search space itself suggests, or a plugin could clash with a name added later."""
    from sparsesearch.plugins import _reserved

    names = {n for t in result.study.trials for n in t.params}
    assert names and all(_reserved(n) for n in names), sorted(n for n in names if not _reserved(n))
