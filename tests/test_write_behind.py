"""The write-behind wrapper of RDB storages: a running trial's writes held in memory, read
back from there, and written in one transaction when it is published, when ``interval``
seconds have passed, and with its final state; the stored trial is the same as with Optuna's
write-at-once storage."""

from __future__ import annotations

import contextlib
import pickle
import sqlite3

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from conftest_pg import pg_url, postgres_server  # noqa: F401  (pytest fixtures)
from sparsesearch import record, write_behind
from sparsesearch.errors import SparsesearchError
from sparsesearch.storage import _RDBStorage, make_storage
from sparsesearch.write_behind import WriteBehindStorage

WRITES = ("set_trial_param", "_set_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
          "set_trial_user_attrs", "set_trial_system_attr", "set_trial_state_values", "write_trial")


def _open(url: str, monkeypatch=None, interval: float | str | None = None):
    if interval is not None:
        monkeypatch.setenv("SPARSESEARCH_WRITE_BEHIND", str(interval))
    return make_storage(url, study_name="s", heartbeat_interval=None)


def _plain(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage of its own that writes every write at once (Optuna's)."""
    return make_storage(url, study_name="s", heartbeat_interval=None)._backend


def _other(url: str) -> optuna.Study:
    """The study as another process sees it: a storage of its own, nothing cached."""
    return optuna.load_study(study_name="s", storage=_plain(url))


def _work(trial: optuna.Trial, epochs: int = 3) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("opt", ["sgd", "adamw"])
    trial.set_user_attr("phase", "screen")
    record.trial_attrs(trial, {"sparsity": {"fc1": 0.9}, "params": 12})
    for step in range(epochs):
        trial.report(x + step, step)
    trial.set_constraint("budget", -1.0)
    return x


@pytest.fixture
def held():
    """``held(url, ...)``: a storage holding the writes of the trials it runs (as sparsesearch's
    runner makes it) for the rest of the test."""
    stack = contextlib.ExitStack()

    def open_held(url: str, monkeypatch=None, interval: float | None = None):
        storage = _open(url, monkeypatch, interval)
        stack.enter_context(storage.holding())
        return storage

    yield open_held
    stack.close()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path}/s.db"


def test_the_default_storage_holds_writes(tmp_path):
    storage = make_storage(None, study_name="s", runs_dir=tmp_path)
    assert isinstance(storage, WriteBehindStorage)
    assert storage._interval == write_behind.DEFAULT_INTERVAL
    assert storage.url == f"sqlite:///{tmp_path}/s/study.db"


def test_a_trial_is_written_in_one_transaction_and_stored_as_optuna_would(url, held, count_calls):
    study = optuna.create_study(storage=held(url), study_name="s")
    study.optimize(_work, n_trials=1)  # the first trial checks its parameters' names at once
    calls = count_calls(_RDBStorage, *WRITES)
    study.optimize(_work, n_trials=1)
    assert calls["write_trial"] == 1 and sum(calls.values()) == 1, calls
    stored = _other(url).trials[1]
    here = study.trials[1]
    assert stored.state == here.state == TrialState.COMPLETE
    for field in ("params", "distributions", "intermediate_values", "user_attrs", "system_attrs", "values",
                  "datetime_start", "datetime_complete"):
        assert getattr(stored, field) == getattr(here, field), field
    assert stored.user_attrs == {"phase": "screen", "sparsity": {"fc1": 0.9}, "params": 12}
    assert stored.intermediate_values == {0: stored.params["x"], 1: stored.params["x"] + 1, 2: stored.params["x"] + 2}
    assert stored.system_attrs["constraints:budget"] == -1.0

    # the same trial with every write made at once (Optuna's own storage) stores the same
    reference = optuna.create_study(storage=_plain(url), study_name="ref")
    reference.enqueue_trial(stored.params)
    reference.optimize(_work, n_trials=1)
    (ref,) = reference.trials
    for field in ("params", "distributions", "intermediate_values", "user_attrs", "values"):
        assert getattr(ref, field) == getattr(stored, field), field


def test_a_running_trial_reads_its_held_writes_and_others_see_them_once_published(url, monkeypatch, held):
    study = optuna.create_study(storage=held(url, monkeypatch, interval=3600), study_name="s")
    study.optimize(_work, n_trials=1)
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.5, 0)
    record.trial_attrs(trial, {"phase": "final"})
    mine = study.get_trials(deepcopy=False)[-1]  # this process's view: held writes included
    assert (mine.params, mine.intermediate_values, mine.user_attrs) == ({"x": x}, {0: 0.5}, {"phase": "final"})
    assert study._storage.get_trial(trial._trial_id).params == {"x": x}
    theirs = _other(url).trials[-1]
    assert theirs.state == TrialState.RUNNING and theirs.params == {} and theirs.intermediate_values == {}

    record.publish(trial)  # what sparsesearch does when a trial's training starts
    study._storage.wait()  # the write runs beside the training
    theirs = _other(url).trials[-1]
    assert theirs.params == {"x": x} and theirs.intermediate_values == {0: 0.5}
    assert theirs.user_attrs == {"phase": "final"}
    trial.report(0.7, 1)
    assert _other(url).trials[-1].intermediate_values == {0: 0.5}  # held again, until the end
    study.tell(trial, 0.7)
    assert _other(url).trials[-1].intermediate_values == {0: 0.5, 1: 0.7}


def test_writes_wait_at_most_the_interval(url, monkeypatch, held):
    clock = [1000.0]
    monkeypatch.setattr(write_behind.time, "monotonic", lambda: clock[0])
    study = optuna.create_study(storage=held(url, monkeypatch, interval=5), study_name="s")
    study.optimize(_work, n_trials=1)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.1, 0)
    clock[0] += 4.9
    trial.report(0.2, 1)
    assert _other(url).trials[-1].intermediate_values == {}
    clock[0] += 0.2  # 5.1 s after the trial began: this write takes the others with it
    trial.report(0.3, 2)
    assert _other(url).trials[-1].intermediate_values == {0: 0.1, 1: 0.2, 2: 0.3}
    study.tell(trial, 0.3)


def test_interval_0_writes_every_write_at_once(url, monkeypatch, held):
    study = optuna.create_study(storage=held(url, monkeypatch, interval=0), study_name="s")
    study.optimize(_work, n_trials=1)
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    assert _other(url).trials[-1].params == {"x": x}
    trial.report(0.1, 0)
    assert _other(url).trials[-1].intermediate_values == {0: 0.1}
    study.tell(trial, 0.1)


def test_a_negative_interval_is_one_line(tmp_path, monkeypatch):
    for bad in (-1, "nan", "inf"):
        with pytest.raises(SparsesearchError, match="SPARSESEARCH_WRITE_BEHIND must be a number of seconds >= 0"):
            _open(f"sqlite:///{tmp_path}/s.db", monkeypatch, interval=bad)


def test_bad_writes_are_refused_at_once_not_at_the_end(url, monkeypatch, held):
    study = optuna.create_study(storage=held(url, monkeypatch, interval=3600), study_name="s")
    study.optimize(_work, n_trials=1)
    trial = study.ask()
    with pytest.raises(ValueError, match="compatib|Cannot set different distribution"):
        trial.suggest_int("x", 0, 10)  # "x" was a float in the first trial
    with pytest.raises(TypeError):
        trial.set_user_attr("model", object())  # not JSON
    study.tell(trial, 0.0)
    assert _other(url).trials[-1].state == TrialState.COMPLETE


def test_the_final_write_is_all_or_nothing(url, monkeypatch, held):
    """A trial failed meanwhile by another worker (stale): the held writes and the state are
    refused together, as a write-at-once storage refuses the next write."""
    study = optuna.create_study(storage=held(url, monkeypatch, interval=3600), study_name="s")
    study.optimize(_work, n_trials=1)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("phase", "screen")
    _plain(url).set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):
        study.tell(trial, 0.5)
    stored = _other(url).trials[-1]
    assert stored.state == TrialState.FAIL and stored.params == {} and stored.user_attrs == {}
    assert study.trials[-1].state == TrialState.FAIL  # this process reads the truth again


def test_enqueued_trials_are_held_once_popped(url, held, count_calls):
    study = optuna.create_study(storage=held(url), study_name="s")
    study.optimize(_work, n_trials=1)
    study.enqueue_trial({"x": 0.25, "opt": "sgd"}, user_attrs={"heuristic": "uniform"})
    calls = count_calls(_RDBStorage, *WRITES)
    study.optimize(_work, n_trials=1)
    assert calls["write_trial"] == 1 and calls["set_trial_state_values"] == 1, calls  # RUNNING, then one write
    stored = _other(url).trials[-1]
    assert stored.params == {"x": 0.25, "opt": "sgd"}
    assert stored.user_attrs["heuristic"] == "uniform" and stored.user_attrs["phase"] == "screen"


def test_the_stale_trial_check_runs_once_per_heartbeat_interval(tmp_path, count_calls):
    storage = make_storage(f"sqlite:///{tmp_path}/s.db", study_name="s", heartbeat_interval=3600)
    calls = count_calls(_RDBStorage, "_get_stale_trial_ids")
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(_work, n_trials=3)
    assert calls["_get_stale_trial_ids"] == 1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_a_pickled_storage_holds_nothing(url, monkeypatch, held):
    storage = held(url, monkeypatch, interval=3600)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(_work, n_trials=1)  # its upsert statements are cached, and unpicklable
    study.ask()
    copied = pickle.loads(pickle.dumps(storage))
    assert storage._held and not copied._held


def test_a_search_stores_what_it_saw(tmp_path):
    """search() on the default storage: every trial as stored (read by a fresh storage) is the
    trial its own process saw, pruned and finalist trials included; no trial is left RUNNING."""
    import sparsesearch

    url = f"sqlite:///{tmp_path / 'study.db'}"
    r = sparsesearch.search("digits-mlp", "digits", 0.08, storage=url, study_name="s", seed=0,
                            dense={"epochs": 2}, compute={"epochs": 12}, runs_dir=tmp_path / "runs",
                            heuristics=["uniform", "lamp"])
    seen = r.study.get_trials()
    stored = _other(url).get_trials()
    assert len(seen) == len(stored) >= 3
    assert not [t for t in stored if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for here, there in zip(seen, stored):
        for field in ("state", "params", "intermediate_values", "user_attrs", "values", "datetime_complete"):
            assert getattr(here, field) == getattr(there, field), (here.number, field)
        assert {k: v for k, v in here.system_attrs.items()} == there.system_attrs, here.number


def test_a_short_trial_beats_once_with_its_first_write(tmp_path, count_calls):
    storage = make_storage(f"sqlite:///{tmp_path}/s.db", study_name="s", heartbeat_interval=3600)
    calls = count_calls(_RDBStorage, "record_heartbeat", "write_trial")
    study = optuna.create_study(storage=storage, study_name="s")

    def work(trial):
        _work(trial)
        record.publish(trial)
        study._storage.wait()
        with sqlite3.connect(tmp_path / "s.db") as db:  # its heartbeat, by the database clock
            assert (trial._trial_id,) in db.execute("SELECT trial_id FROM trial_heartbeats").fetchall()
        return 0.0

    with storage.holding():
        study.optimize(work, n_trials=2)
    assert calls["record_heartbeat"] == 0  # each trial's only beat went with its publish
    assert calls["write_trial"] == 4


def _sha_first_decision(storage) -> bool:
    study = optuna.create_study(storage=storage, study_name="sha",
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, bootstrap_count=1))
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(1.0, 1)
    return trial.should_prune()


def test_a_pruner_decides_as_on_optunas_storage(tmp_path, held):
    """The pruner reads the study, then writes its rung on the trial: what it read must not
    change under it (the held trial is handed out as a copy)."""
    expected = _sha_first_decision(optuna.storages.InMemoryStorage())
    assert _sha_first_decision(held(f"sqlite:///{tmp_path}/s.db")) == expected is True


def test_outside_the_runner_every_write_is_made_at_once(url):
    """A trial asked by one process and told by another (Optuna's ask-and-tell) loses nothing."""
    study = optuna.create_study(storage=_open(url), study_name="s")
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.3, 0)
    trial.set_user_attr("note", "asked here")
    other = _other(url)
    other.tell(trial.number, 0.5)
    (stored,) = _other(url).trials
    assert (stored.params, stored.intermediate_values, stored.user_attrs) == ({"x": x}, {0: 0.3}, {"note": "asked here"})


def test_a_trial_slow_to_its_first_write_still_beats(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    storage = make_storage(url, study_name="s", heartbeat_interval=3600)
    with storage.holding():
        study = optuna.create_study(storage=storage, study_name="s")
        trial = study.ask()

        def beats():
            with sqlite3.connect(tmp_path / "s.db") as db:
                return db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]

        storage.record_heartbeat(trial._trial_id)  # as the trial starts: held for its first write
        assert beats() == 0
        storage.record_heartbeat(trial._trial_id)  # an interval later, still no write: at once
        assert beats() == 1
        study.tell(trial, 0.0)


def test_trials_now_sees_a_trial_another_worker_just_created(tmp_path, held):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=held(url), study_name="s")
    assert study.get_trials() == []  # a read, cached for a moment
    _other(url).ask()  # another worker starts a trial
    assert [t.state for t in record.trials_now(study)] == [TrialState.RUNNING]
