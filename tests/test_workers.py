"""Several workers in one process (threads, each with its own storage connection): exact
COMPLETE counts, surplus trials, waiting for and retrying a dead worker's trial, caches."""

from __future__ import annotations

import random
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from sparsesearch.errors import SparsesearchError
from sparsesearch.storage import HEARTBEAT_ATTR, RETRY_OF_ATTR, make_storage
from sparsesearch.runner import (
    SURPLUS_ATTR,
    _guard,
    cached_tensors,
    count_trials,
    create_study_once,
    optimize_until,
    setup_owner,
)
from sparsesearch.workers import resume_hint, split_trials

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def _study(path, name="s", **kw):
    kw.setdefault("heartbeat_interval", 1)
    kw.setdefault("grace_period", 2)
    storage = make_storage(f"journal:{path}", study_name=name, **kw)
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler())


def _objective(seed):
    rng = random.Random(seed)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        time.sleep(rng.uniform(0.0, 0.03))
        if rng.random() < 0.25:
            raise optuna.TrialPruned()
        if rng.random() < 0.1:
            raise RuntimeError("a failing trial")
        return x

    return objective


@pytest.mark.parametrize("workers, target", [(4, 7), (3, 1)])
def test_concurrent_workers_end_with_exactly_max_complete(tmp_path, workers, target):
    path = tmp_path / "j.log"
    _study(path)
    errors = []

    def work(i):
        try:  # each worker its own storage object, as separate processes have
            optimize_until(_study(path), _objective(i), target, poll_interval=(0.01, 0.05))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    trials = _study(path).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == target
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({t.number for t in trials}) == len(trials)
    for t in trials:  # only pruned trials are surplus
        if t.user_attrs.get(SURPLUS_ATTR):
            assert t.state == TrialState.PRUNED


def test_surplus_trial_is_pruned_and_its_queued_params_queued_again(tmp_path):
    study = _study(tmp_path / "j.log")
    ahead = study.ask()  # another worker's trial, running: with it the count is reached
    study.enqueue_trial({"x": 0.25}, user_attrs={"heuristic": "lamp"})
    late = study.ask()  # pops the queued trial
    assert late.number > ahead.number
    ran = []
    guarded = _guard(lambda t: ran.append(t.number) or 1.0, max_complete=1)
    with pytest.raises(optuna.TrialPruned, match="surplus"):
        guarded(late)
    assert ran == []
    assert late.user_attrs[SURPLUS_ATTR] is True
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == {"x": 0.25}
    assert queued.user_attrs == {"heuristic": "lamp"}
    # the lower number goes ahead: its own check passes
    assert guarded(ahead) == 1.0 and ran == [ahead.number]


def test_a_dead_workers_trial_is_waited_for_failed_and_rerun(tmp_path):
    study = _study(tmp_path / "j.log")
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study._storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 60)
    ran = optimize_until(study, lambda t: t.suggest_float("x", 0, 1), 2, poll_interval=(0.01, 0.05))
    trials = study.trials
    assert trials[dead.number].state == TrialState.FAIL
    assert count_trials(study) == (2, 0) and ran == 2
    (retry,) = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == dead.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params["x"] == trials[dead.number].params["x"]


def test_waiting_on_a_live_trial_respects_the_timeout(tmp_path):
    study = _study(tmp_path / "j.log", heartbeat_interval=None)
    study.ask()  # alive (no heartbeats: never stale); the count is reached with it
    start = time.monotonic()
    ran = optimize_until(study, lambda t: 1.0, 1, timeout=0.5, poll_interval=(0.05, 0.1))
    assert ran == 0 and time.monotonic() - start < 5
    assert count_trials(study) == (0, 1)


def test_optimize_until_stops_at_n_trials_and_when_already_complete(tmp_path):
    study = _study(tmp_path / "j.log")
    assert optimize_until(study, lambda t: 1.0, 10, n_trials=3) == 3
    assert optimize_until(study, lambda t: 1.0, 2) == 0  # already 3 >= 2
    with pytest.raises(SparsesearchError):
        optimize_until(study, lambda t: 1.0, 0)


def test_study_is_created_once_and_set_up_by_its_creator(tmp_path):
    storage = make_storage(f"journal:{tmp_path}/j.log", study_name="s")
    results = []
    threads = [threading.Thread(target=lambda: results.append(create_study_once(storage, "s", ["maximize"])))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    study = optuna.load_study(study_name="s", storage=storage)
    assert setup_owner(study, True) == (True, {})
    study.set_user_attr("budget_params", 5)
    assert setup_owner(study, False) == (False, {"budget_params": 5})
    other = optuna.create_study(storage=storage, study_name="empty")  # made by someone else
    assert setup_owner(other, False, timeout=0.2)[0] is True


def test_split_trials():
    assert split_trials(None, 3) == [None, None, None]
    assert split_trials(7, 3) == [3, 2, 2]
    assert split_trials(1, 2) == [1, 0]


def test_resume_hint_names_the_study_and_masks_the_password(tmp_path):
    hint = resume_hint("my study", "postgresql://me:secret@db.example/optuna",
                       study_file="studies/digits-mlp.toml")
    assert "secret" not in hint and "me:***@db.example" in hint
    assert "sparsesearch run studies/digits-mlp.toml --study-name 'my study'" in hint
    assert "--storage 'postgresql://me:***@db.example/optuna'" in hint and "\n" not in hint
    hint = resume_hint("s", None, workers=2)
    assert "--storage" not in hint and "--workers 2" in hint
    journal = make_storage(f"journal:{tmp_path}/j.log", study_name="s")
    assert f"--storage journal:{tmp_path}/j.log" in resume_hint("s", journal)


def test_cached_tensors_computes_once_and_shares(tmp_path):
    import torch

    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.1)
        return {"a": torch.arange(3.0), "b": torch.ones(2, 2)}

    path = tmp_path / "scores-x.pt"
    out = []
    threads = [threading.Thread(target=lambda: out.append(cached_tensors(path, compute))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 3
    for o in out:
        assert torch.equal(o["a"], torch.arange(3.0)) and torch.equal(o["b"], torch.ones(2, 2))
    path.write_bytes(b"not a torch file")  # a damaged cache is recomputed
    assert torch.equal(cached_tensors(path, compute)["a"], torch.arange(3.0)) and len(calls) == 2


@pytest.mark.parametrize("max_complete", [None, 3])
def test_a_trial_failed_meanwhile_by_another_worker_is_not_fatal(tmp_path, max_complete, caplog):
    from sparsesearch.runner import run_study

    study = _study(tmp_path / "j.log")
    other = _study(tmp_path / "j.log")  # another worker's view of the study

    def objective(trial):
        if trial.number == 0:  # another worker decides this one is stale meanwhile
            other._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return 1.0

    with caplog.at_level("WARNING", logger="sparsesearch"):
        run_study(study, objective, n_trials=3 if max_complete is None else None, timeout=None,
                  max_complete=max_complete)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL
    assert states.count(TrialState.COMPLETE) == (2 if max_complete is None else 3)
    assert "marked FAIL by another worker" in caplog.text


def test_study_stop_from_a_callback_ends_optimize_until(tmp_path):
    study = _study(tmp_path / "j.log")
    ran = optimize_until(study, lambda t: 1.0, 10, callbacks=[lambda s, t: s.stop()])
    assert ran == 1 and count_trials(study) == (1, 0)


def test_run_workers_builds_the_result_without_searching_again(tmp_path, monkeypatch):
    import sparsesearch.workers as workers_module
    from sparsesearch import count_params
    from sparsesearch.search import best_trial

    def no_search(**kw):  # the parent must not set up or run the study a second time
        raise AssertionError("run_workers called search() in the parent")

    monkeypatch.setattr(workers_module, "search", no_search)
    kw = dict(model="digits-mlp", data="digits", budget=0.1, study_name="w", runs_dir=str(tmp_path),
              heuristics=["uniform"], dense={"epochs": 3, "lr": 0.1, "optimizer": "sgd"},
              space={"epochs": 2}, compute={"epochs": 8, "final_share": 0.5})
    result = workers_module.run_workers(2, search_kwargs=kw, threads_per_worker=1)
    study = result.study
    assert result.best_trial.number == best_trial(study).number
    assert best_trial(study).user_attrs["phase"] == "final"
    assert study.user_attrs["test_accuracy"] == {str(result.best_trial.number): result.test_accuracy}
    assert study.user_attrs["epochs_trained"] == result.epochs_trained == sum(
        t.user_attrs.get("epochs", 0) for t in study.trials)
    assert result.params == result.best_trial.user_attrs["params"] <= result.budget_params
    assert count_params(result.model).remaining == result.params
    assert result.compute_budget == 8 and result.dense_val_accuracy == study.user_attrs["dense_val_accuracy"]


def test_a_study_the_workers_never_created_is_one_line_not_a_keyerror(tmp_path):
    # every worker killed before creating the study: the parent's result says so, before it
    # would train the dense model itself
    from sparsesearch.errors import SparsesearchError
    from sparsesearch.workers import _result

    kw = {"model": "digits-mlp", "data": "digits", "study_name": "never", "runs_dir": tmp_path}
    with pytest.raises(SparsesearchError, match="study 'never' was not created: the workers ended before it"):
        _result(kw, f"journal:{tmp_path / 'j.log'}", evaluate_test=False)
    assert not list(tmp_path.rglob("dense-*.pt"))
