"""Storages: what a spec resolves to, heartbeats on the journal, retries of an unreachable
database (masked, one line each, then one clean error), reconnection after a restart."""

from __future__ import annotations

import logging
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest_pg import PostgresServer, free_port, missing_reason, pg_url, postgres_server  # noqa: F401
from sparsesearch.errors import SparsesearchError
from sparsesearch.storage import (
    HEARTBEAT_ATTR,
    RETRY_OF_ATTR,
    WORKER_ATTR,
    HeartbeatJournalStorage,
    RetryStaleTrial,
    make_storage,
    resolve_storage_spec,
    storage_label,
)
from sparsesearch.runner import run_study
from sparsesearch.write_behind import WriteBehindStorage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

def _inner(storage):
    return getattr(storage, "_backend", storage)


# ---------------------------------------------------------------------------------------------
# resolving specs


def test_default_is_sqlite_for_one_worker_and_journal_for_several(tmp_path):
    assert resolve_storage_spec(None, study_name="s", runs_dir=tmp_path) == f"sqlite:///{tmp_path}/s/study.db"
    assert resolve_storage_spec(None, study_name="s", runs_dir=tmp_path, workers=2) == \
        f"journal:{tmp_path}/s/journal.log"
    one = make_storage(None, study_name="s", runs_dir=tmp_path)
    assert isinstance(one, WriteBehindStorage) and isinstance(one._backend, optuna.storages.RDBStorage)
    assert one.url == f"sqlite:///{tmp_path}/s/study.db"
    many = make_storage(None, study_name="m", runs_dir=tmp_path, workers=3)
    assert isinstance(many, HeartbeatJournalStorage)
    assert (tmp_path / "m" / "journal.log").is_file()


def test_a_study_with_only_a_journal_keeps_using_it(tmp_path):
    make_storage(None, study_name="s", runs_dir=tmp_path, workers=2)
    assert resolve_storage_spec(None, study_name="s", runs_dir=tmp_path) == f"journal:{tmp_path}/s/journal.log"


@pytest.mark.parametrize("spec, expected", [
    ("journal:/x/j.log", "journal:/x/j.log"),
    ("runs/a.log", "journal:runs/a.log"),
    ("b.journal", "journal:b.journal"),
    ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
    ("postgresql+psycopg2://u@h:5/db", "postgresql+psycopg2://u@h:5/db"),
    ("mysql://u@h/db", "mysql://u@h/db"),
    ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_specs(spec, expected):
    assert resolve_storage_spec(spec, study_name="s") == expected


@pytest.mark.parametrize("spec", ["", "study.db", "journal:", "redis://localhost"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(SparsesearchError) as info:
        resolve_storage_spec(spec, study_name="s")
    assert "\n" not in str(info.value)


def test_storage_objects_pass_through():
    mem = optuna.storages.InMemoryStorage()
    assert make_storage(mem, study_name="s") is mem


def test_rdb_storage_has_heartbeats_and_retries_stale_trials(tmp_path, monkeypatch):
    s = make_storage(f"sqlite:///{tmp_path}/a.db", study_name="s")
    assert s.get_heartbeat_interval() == 20 and _inner(s).grace_period is None
    assert isinstance(s.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert _inner(s).engine_kwargs["pool_pre_ping"] is True
    monkeypatch.setenv("SPARSESEARCH_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("SPARSESEARCH_HEARTBEAT_GRACE", "7")
    s = make_storage(f"sqlite:///{tmp_path}/b.db", study_name="s")
    assert (s.get_heartbeat_interval(), _inner(s).grace_period) == (2, 7)
    s = make_storage(f"sqlite:///{tmp_path}/c.db", study_name="s", heartbeat_interval=None)
    assert s.get_heartbeat_interval() is None
    with pytest.raises(SparsesearchError):
        make_storage(f"sqlite:///{tmp_path}/d.db", study_name="s", heartbeat_interval=0)


def test_storage_label_masks_passwords(tmp_path):
    assert storage_label("postgresql://me:secret@h/db") == "postgresql://me:***@h/db"
    j = make_storage(f"journal:{tmp_path}/j.log", study_name="s")
    assert storage_label(j) == f"journal:{tmp_path}/j.log"


# ---------------------------------------------------------------------------------------------
# journal heartbeats


def _journal(tmp_path, **kw):
    kw.setdefault("heartbeat_interval", 1)
    kw.setdefault("grace_period", 2)
    return make_storage(f"journal:{tmp_path}/j.log", study_name="s", **kw)


def test_journal_heartbeat_is_recorded_while_a_trial_runs(tmp_path):
    storage = _journal(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # poll until the heartbeat thread wrote its first beat
            attrs = storage.get_trial(trial._trial_id).system_attrs
            if HEARTBEAT_ATTR in attrs and WORKER_ATTR in attrs:
                return 1.0
            time.sleep(0.01)
        raise AssertionError("no heartbeat recorded")

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE
    assert abs(t.system_attrs[HEARTBEAT_ATTR] - time.time()) < 60
    assert t.system_attrs[WORKER_ATTR].endswith(f":{__import__('os').getpid()}")


def _dead_trial(study, *, age=100.0, heuristic="uniform"):
    """A RUNNING trial of a worker that died ``age`` seconds after its last heartbeat."""
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("heuristic", heuristic)
    trial.set_user_attr("recipe", {"written": "by the dead run"})
    study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - age)
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, "elsewhere:1")
    return trial


def test_stale_journal_trial_is_failed_and_queued_again(tmp_path):
    storage = _journal(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    dead = _dead_trial(study)
    fresh = _dead_trial(study, age=0.0)  # alive: within the grace period
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[fresh.number].state == TrialState.RUNNING
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == trials[dead.number].params
    assert retry.user_attrs[RETRY_OF_ATTR] == dead.number
    assert retry.user_attrs["heuristic"] == "uniform"
    assert "recipe" not in retry.user_attrs  # what the dead run wrote is not carried over
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.system_attrs["retry_history"] == [dead.number]
    assert HEARTBEAT_ATTR not in retry.system_attrs and WORKER_ATTR not in retry.system_attrs
    # the retry runs with the same parameters
    x = trials[dead.number].params["x"]
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert study.trials[retry.number].state == TrialState.COMPLETE
    assert study.trials[retry.number].params["x"] == x


def test_retries_stop_after_max_retry(tmp_path):
    storage = _journal(tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    callback = RetryStaleTrial(max_retry=1)
    dead = _dead_trial(study)
    storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)
    callback(study, study.trials[dead.number])
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    again = study.ask()  # the retry, which dies too
    storage.set_trial_state_values(again._trial_id, TrialState.FAIL)
    callback(study, study.trials[again.number])
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_journal_without_heartbeat_never_fails_trials(tmp_path):
    storage = _journal(tmp_path, heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="s")
    _dead_trial(study)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING


def test_journal_storage_pickles(tmp_path):
    import pickle

    storage = _journal(tmp_path)
    optuna.create_study(storage=storage, study_name="s")
    copy = pickle.loads(pickle.dumps(storage))
    assert copy.get_heartbeat_interval() == 1
    assert copy.get_all_studies()[0].study_name == "s"


# ---------------------------------------------------------------------------------------------
# an unreachable database


class _Lines(logging.Handler):
    def __init__(self, on_first=None):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.on_first = on_first

    def emit(self, record):
        self.lines.append(record.getMessage())
        if self.on_first is not None and len(self.lines) == 1:
            self.on_first()


@pytest.fixture
def warnings_log():
    handlers = []

    def attach(on_first=None):
        h = _Lines(on_first)
        logging.getLogger("sparsesearch").addHandler(h)
        handlers.append(h)
        return h

    yield attach
    for h in handlers:
        logging.getLogger("sparsesearch").removeHandler(h)


@pytest.mark.skipif(missing_reason() is not None and "psycopg2" in (missing_reason() or ""),
                    reason="psycopg2 is not installed")
def test_unreachable_database_retries_then_fails_cleanly(warnings_log):
    lines = warnings_log()
    url = f"postgresql+psycopg2://me:s3cr3t@127.0.0.1:{free_port()}/db"
    with pytest.raises(SparsesearchError) as info:
        make_storage(url, study_name="s", connect_retries=2, retry_wait=0.01)
    msg = str(info.value)
    assert "s3cr3t" not in msg and "me:***@127.0.0.1" in msg
    assert "after 3 attempts" in msg and "\n" not in msg
    assert len(lines.lines) == 2
    for i, line in enumerate(lines.lines, 1):
        assert "s3cr3t" not in line and "***" in line
        assert f"retry {i}/2" in line and "\n" not in line


def test_bad_credentials_are_not_retried(postgres_server, warnings_log):
    lines = warnings_log()
    url = postgres_server.url("no_such_database")
    with pytest.raises(SparsesearchError, match="no_such_database"):
        make_storage(url, study_name="s", connect_retries=3, retry_wait=0.01)
    assert lines.lines == []


@pytest.fixture
def own_server():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


def _restart_in_background(server):
    """Start ``server`` again from another thread (called on the first retry message)."""
    done = threading.Event()

    def start():
        server.start()
        done.set()

    return lambda: threading.Thread(target=start, daemon=True).start(), done


def test_briefly_unreachable_database_is_waited_for(own_server, warnings_log):
    url = own_server.create_database()
    own_server.stop()
    restart, done = _restart_in_background(own_server)
    lines = warnings_log(on_first=restart)
    storage = make_storage(url, study_name="s", connect_retries=8, retry_wait=0.2)
    assert done.is_set() and lines.lines
    assert "cannot reach storage" in lines.lines[0] and "retry 1/8" in lines.lines[0]
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2


def test_database_restart_between_trials_is_survived(own_server, warnings_log):
    url = own_server.create_database()
    storage = make_storage(url, study_name="s", connect_retries=8, retry_wait=0.2)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    own_server.stop()  # the pooled connections die with it
    restart, done = _restart_in_background(own_server)
    warnings_log(on_first=restart)
    run_study(study, lambda t: t.suggest_float("x", 0, 1), n_trials=2, timeout=None)
    assert done.is_set()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_database_down_for_good_is_one_clean_error_and_no_half_written_trial(own_server, warnings_log):
    url = own_server.create_database()
    masked_url = url.replace("postgres@", "postgres:pw@")  # trust auth ignores the password
    storage = make_storage(masked_url, study_name="s", connect_retries=1, retry_wait=0.01)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    own_server.stop()
    with pytest.raises(SparsesearchError) as info:
        run_study(study, lambda t: t.suggest_float("x", 0, 1), n_trials=3, timeout=None)
    assert "pw@" not in str(info.value) and "***" in str(info.value)
    own_server.start()
    trials = optuna.load_study(study_name="s", storage=make_storage(url, study_name="s", heartbeat_interval=None)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]


def test_workers_opening_a_new_database_at_once_all_succeed(postgres_server):
    """Creating Optuna's schema concurrently: the losers' CREATE fails, they open it instead."""
    for _ in range(3):
        url = postgres_server.create_database()
        barrier = threading.Barrier(4)
        errors, opened = [], []

        def open_it():
            try:
                barrier.wait()
                opened.append(make_storage(url, study_name="s", connect_retries=0))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(opened) == 4


def test_a_retry_keeps_the_trials_inputs_not_what_its_run_wrote():
    from sparsesearch.storage import input_system_attrs

    attrs = {"fixed_params": {"lr": 0.01}, "constraints:budget": -3.0, "completed_rung_0": 0.5,
             WORKER_ATTR: "host:1", HEARTBEAT_ATTR: 1.0, "search_space": {"x": 1}}
    assert input_system_attrs(attrs) == {"fixed_params": {"lr": 0.01}, "search_space": {"x": 1}}
