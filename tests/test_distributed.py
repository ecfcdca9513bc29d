"""Distributed studies for real: ``sparsesearch run`` worker processes sharing one study in a
PostgreSQL server started by the suite (see conftest_pg.py) or in a journal file; a worker
killed with SIGKILL mid-trial; Ctrl-C; ``--workers 2``.

Tiny settings (digits, dense 3 epochs, fine-tuning 1 epoch, 2 seed trials) and short
heartbeats (1 s, grace 3 s) keep it fast. Synchronisation is by polling the storage for a
condition (a RUNNING trial of a given worker), never by sleeping a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest_pg import pg_url, postgres_server  # noqa: F401 - pytest fixtures
from sparsesearch.storage import RETRY_OF_ATTR, WORKER_ATTR, make_storage
from sparsesearch.runner import SURPLUS_ATTR

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_COMPLETE = 4
STUDY = """\
[study]
name = "dist"
max_complete = {n}
seed = 0

[model]
name = "digits-mlp"

[data]
name = "digits"

[budget]
fraction = 0.1

[search]
strategies = ["magnitude"]
heuristics = ["uniform", "erk"]
pruner = "{pruner}"

[space]
lr = [0.02, 0.3]
optimizer = "sgd"
epochs = {epochs}
heuristic_lrs = [0.05]

[compute]
epochs = 1000          # the workers' exact trial counts are under test, not the compute budget
finalists = 0

[dense]
epochs = 3
lr = 0.1
batch_size = 64
"""


def _study_file(tmp_path: Path, *, epochs: int = 1, pruner: str = "median") -> Path:
    path = tmp_path / "dist.toml"
    path.write_text(STUDY.format(n=N_COMPLETE, epochs=epochs, pruner=pruner))
    return path


class Worker:
    """``python -m sparsesearch run ...`` in the background; output in files."""

    def __init__(self, tmp_path: Path, name: str, study_file: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.out = tmp_path / f"{name}.out"
        self.err = tmp_path / f"{name}.err"
        env = dict(os.environ, SPARSESEARCH_HEARTBEAT_INTERVAL="1", SPARSESEARCH_HEARTBEAT_GRACE="3",
                   PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
        cmd = [sys.executable, "-m", "sparsesearch", "run", str(study_file), "--runs-dir",
               str(tmp_path / f"runs-{name}"), "--no-report", *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tmp_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"worker did not finish in {timeout}s:\n{self.output()}") from None

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited early ({self.proc.returncode}):\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def _spec(kind: str, request, tmp_path: Path) -> str:
    if kind == "postgres":
        return request.getfixturevalue("pg_url")
    return f"journal:{tmp_path / 'shared' / 'journal.log'}"


_storages: dict[str, object] = {}


def _load(spec: str, name: str = "dist") -> optuna.Study | None:
    if spec not in _storages:  # one connection pool per storage: polling stays cheap
        _storages[spec] = make_storage(spec, study_name=name, heartbeat_interval=None, connect_retries=0)
    try:
        return optuna.load_study(study_name=name, storage=_storages[spec])
    except KeyError:
        return None  # not created yet


def _poll(condition, alive: list[Worker], timeout: float = 120.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy (workers must stay alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for w in alive:
            w.check_alive()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running_trial_of(spec: str, pid: int, *, mid_training: bool = True):
    """A RUNNING trial of worker ``pid`` (with ``mid_training``: one whose training started, as
    its parameters in the storage show: an RDB storage holds its reports a few seconds), or None."""
    study = _load(spec)
    if study is None:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if str(t.system_attrs.get(WORKER_ATTR, "")).endswith(f":{pid}"):
            if not mid_training or t.params:
                return t
    return None


def _assert_exact(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == N_COMPLETE
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) and sorted(numbers) == list(range(len(numbers)))
    # the seed trials were enqueued once, by the worker that created the study
    seeds = [t.user_attrs["heuristic"] for t in trials if t.user_attrs.get("heuristic")
             and not t.user_attrs.get(SURPLUS_ATTR) and t.state != TrialState.FAIL]
    assert sorted(seeds) == ["erk", "uniform"]
    return trials


def test_two_workers_on_postgres_end_with_exactly_the_requested_complete_trials(tmp_path, pg_url, workers):
    study_file = _study_file(tmp_path)
    for name in ("a", "b"):  # separate run folders: as on two machines
        workers.append(Worker(tmp_path, name, study_file, "--storage", pg_url, "--study-name", "dist", "-q"))
    for w in workers:
        assert w.wait() == 0, w.output()
    study = _load(pg_url)
    trials = _assert_exact(study)
    assert {t.system_attrs[WORKER_ATTR].rsplit(":", 1)[1] for t in trials
            if t.state == TrialState.COMPLETE} <= {str(w.pid) for w in workers}
    assert "best trial #" in workers[0].output()


# the digits MLP; in a worker started with SS_TEST_BLOCK=1, a trial's pruned (masked) copy stops
# in its second epoch and waits to be killed: the victim is caught mid-trial however fast the
# machine (its trials would otherwise finish before a poll sees them), and the survivor, started
# without it, re-runs that trial normally
BLOCKING_MLP = """\
import os
import time

import torch
from torch import nn
from torch.nn.utils import parametrize


class MLP(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, num_classes)
        self.calls = 0

    def forward(self, x):
        if self.training and parametrize.is_parametrized(self.fc1) and os.environ.get("SS_TEST_BLOCK"):
            self.calls += 1
            while self.calls > 12:  # past the first epoch (9 batches) and its report
                time.sleep(0.05)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


def make(num_classes=10, **kwargs):
    return MLP(num_classes)
"""


@pytest.mark.parametrize("kind", ["postgres", "journal"])
def test_a_worker_killed_mid_trial_is_failed_and_its_trial_rerun(tmp_path, request, workers, kind):
    spec = _spec(kind, request, tmp_path)
    study_file = _study_file(tmp_path, epochs=3, pruner="none")
    (tmp_path / "blocking_dist.py").write_text(BLOCKING_MLP)
    study_file.write_text(study_file.read_text().replace('name = "digits-mlp"', 'name = "blocking_dist:make"'))
    victim = Worker(tmp_path, "victim", study_file, "--storage", spec, "-q", env={"SS_TEST_BLOCK": "1"})
    workers.append(victim)
    killed = _poll(lambda: _running_trial_of(spec, victim.pid), [victim],
                   what="a RUNNING trial of the victim in training")
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(30) == -signal.SIGKILL
    # the survivor starts after the kill, so a fast machine cannot let it finish the study
    # before the victim is caught mid-trial; it must find the stale trial and re-run it
    survivor = Worker(tmp_path, "survivor", study_file, "--storage", spec, "-q")
    workers.append(survivor)
    assert survivor.wait() == 0, survivor.output()
    study = _load(spec)
    trials = _assert_exact(study)
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == killed.number]
    assert retry.params == trials[killed.number].params
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.system_attrs[WORKER_ATTR].endswith(f":{survivor.pid}")


def test_workers_2_on_the_digits_study(tmp_path, workers):
    study_file = _study_file(tmp_path)
    w = Worker(tmp_path, "w", study_file, "--workers", "2")
    workers.append(w)
    assert w.wait() == 0, w.output()
    run_dir = tmp_path / "runs-w" / "dist"
    assert (run_dir / "journal.log").is_file() and not (run_dir / "study.db").exists()
    assert len(list(run_dir.glob("dense-*.pt"))) == 1  # trained once, shared
    assert len(list(run_dir.glob("scores-*.pt"))) == 1  # scored once, shared
    study = _load(f"journal:{run_dir / 'journal.log'}")
    trials = _assert_exact(study)
    pids = {t.system_attrs[WORKER_ATTR] for t in trials if WORKER_ATTR in t.system_attrs}
    assert str(w.pid) not in {p.rsplit(":", 1)[1] for p in pids}  # the trials ran in the workers
    # the test accuracy is measured once, for the best trial, by the parent
    assert list(study.user_attrs["test_accuracy"]) == [str(study.user_attrs["best_trial"])]
    out = w.output()
    assert "starting 2 workers (1 torch thread each)" in out and "best trial #" in out
    assert (run_dir / "best.pt").is_file()


@pytest.mark.parametrize("extra", [(), ("--workers", "2")], ids=["one-process", "workers-2"])
def test_ctrl_c_fails_the_running_trial_and_says_how_to_resume(tmp_path, workers, extra):
    study_file = _study_file(tmp_path, epochs=30, pruner="none")  # a trial outlasts the signal
    w = Worker(tmp_path, "w", study_file, "-q", *extra)
    workers.append(w)
    spec = f"journal:{tmp_path / 'runs-w' / 'dist' / 'journal.log'}" if extra else \
        f"sqlite:///{tmp_path / 'runs-w' / 'dist' / 'study.db'}"

    def running():
        if not extra:
            return _running_trial_of(spec, w.pid)
        study = _load(spec) if Path(spec[len("journal:"):]).is_file() else None
        return study and [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                          if t.intermediate_values]

    _poll(running, [w], what="a RUNNING trial in training")
    w.proc.send_signal(signal.SIGINT)
    assert w.wait(60) == 130, w.output()
    err = w.err.read_text()
    assert "resume with: sparsesearch run" in err and str(study_file) in err
    if extra:
        assert "--workers 2" in err
    study = _load(spec)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    assert "Traceback" not in err
