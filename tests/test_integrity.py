"""Nothing lost after a crash, every damaged or unwritable file one clear line: checkpoints,
best.pt, read-only storages and folders, journal files, concurrent schema creation, killed
workers and their trials."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sparsesearch.cli import main
from sparsesearch.errors import SparsesearchError
from sparsesearch.models import ModelError, build_model, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCH_ADVICE = ("weights_only=False", "weights_only` set to `False", "will likely succeed", "add_safe_globals")

TINY = """\
[study]
name = "{name}"
n_trials = 1
seed = 0

[model]
name = "digits-mlp"

[data]
name = "digits"

[budget]
fraction = 0.2

[search]
heuristics = ["uniform"]

[space]
lr = 0.05
epochs = {epochs}
allocation = false

[dense]
epochs = 1
lr = 0.1
"""


def tiny_study(folder: Path, name: str = "t", epochs: int = 1) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY.format(name=name, epochs=epochs))
    return path


def cli(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparsesearch: error: "), err
    assert "Traceback" not in err
    return lines[0]


class Planted:  # pickled by reference: weights_only=True refuses it
    pass


def bad_files(folder: Path) -> dict[str, Path]:
    files = {"empty": folder / "empty.pt", "garbage": folder / "garbage.pt",
             "object": folder / "object.pt", "module": folder / "module.pt",
             "truncated": folder / "truncated.pt"}
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(b"garbage, not a torch file")
    torch.save({"w": Planted()}, files["object"])
    torch.save(torch.nn.Linear(2, 2), files["module"])
    whole = folder / "whole.pt"
    torch.save({"w": torch.zeros(100)}, whole)
    files["truncated"].write_bytes(whole.read_bytes()[:300])
    return files


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """`sparsesearch run` of a tiny study (in-process): runs/t/{study.db,best.pt,...}."""
    cwd = tmp_path_factory.mktemp("integrity")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        study = tiny_study(cwd)
        assert main(["run", str(study), "--quiet", "--no-report"]) == 0
    finally:
        os.chdir(old)
    return cwd, study


# ---------------------------------------------------------------------------------------------
# 4. checkpoints: what the file is, no torch advice, no warning


@pytest.mark.parametrize("kind", ["empty", "garbage", "object", "module", "truncated"])
def test_bad_checkpoint_is_one_line_without_torch_advice(tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError) as info:
            load_checkpoint(build_model("digits-mlp"), path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "\x1b" not in msg
    assert not any(a in msg for a in TORCH_ADVICE), msg
    assert "torch.save(model.state_dict()" in msg
    if kind in ("object", "module"):
        assert "pickled Python object" in msg
    assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------------------------------------
# 9. one line, exit 2, for damaged or unwritable files


@pytest.mark.parametrize("kind", ["empty", "garbage", "object", "truncated"])
def test_export_with_a_damaged_best_pt(ran, tmp_path, capsys, kind, monkeypatch):
    cwd, study = ran
    best = cwd / "runs" / "t" / "best.pt"
    good = best.read_bytes()
    try:
        best.write_bytes(bad_files(tmp_path)[kind].read_bytes())
        monkeypatch.chdir(cwd)
        rc, out, err = cli(capsys, "export", study, "--out", tmp_path / "m.pt")
    finally:
        best.write_bytes(good)
    assert rc == 2
    line = one_error_line(err)
    assert "best.pt" in line and "Remove" in line
    assert not any(a in line for a in TORCH_ADVICE), line
    assert not (tmp_path / "m.pt").exists()


def test_export_into_a_file_where_a_folder_is_expected(ran, tmp_path, capsys, monkeypatch):
    cwd, study = ran
    monkeypatch.chdir(cwd)
    (tmp_path / "plain-file").write_text("x")
    rc, out, err = cli(capsys, "export", study, "--out", tmp_path / "plain-file" / "m.pt")
    assert rc == 2
    assert "not a folder" in one_error_line(err)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs (a folder nobody can create files in)")
def test_export_into_a_read_only_folder(ran, tmp_path, capsys, monkeypatch):
    cwd, study = ran
    monkeypatch.chdir(cwd)
    target = Path("/sys/kernel/sparsesearch-test.pt")  # sysfs: no new files, even for root
    rc, out, err = cli(capsys, "export", study, "--out", target)
    assert rc == 2
    line = one_error_line(err)
    assert "cannot write" in line and str(target) in line
    assert not target.exists()


def test_run_on_a_read_only_database(ran, capsys, monkeypatch):
    cwd, study = ran
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("SPARSESEARCH_DB_RETRIES", "0")
    read_only = "sqlite:///file:runs/t/study.db?mode=ro&uri=true"  # SQLite opens it read-only
    before = (cwd / "runs" / "t" / "study.db").read_bytes()
    rc, out, err = cli(capsys, "run", study, "--quiet", "--no-report", "--storage", read_only)
    assert rc == 2
    assert "readonly database" in one_error_line(err)
    assert (cwd / "runs" / "t" / "study.db").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# 6 and 12. a worker killed at any moment: its trial is failed (with a reason) and re-run


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSESEARCH_DB_RETRIES": "0",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

DIE_RUNNING = """\
import os, signal, sys
import optuna
from sparsesearch.storage import make_storage
storage = make_storage(sys.argv[1], study_name="k", heartbeat_interval=1, grace_period=1)
study = optuna.create_study(storage=storage, study_name="k", direction="maximize")
study.ask()  # RUNNING, and no heartbeat yet: the moment Optuna's stale check used to miss
os.kill(os.getpid(), signal.SIGKILL)
"""


def poll(condition, what: str, limit: float = 120.0):
    """Poll ``condition()`` (reads the storage) until it returns something true."""
    import time

    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)  # polling interval, not a synchronisation


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trial_killed_before_its_first_heartbeat_is_failed_and_retried(tmp_path, kind):
    from sparsesearch.storage import make_storage

    url = f"sqlite:///{tmp_path / 'k.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'k.log'}"
    proc = subprocess.run([sys.executable, "-c", DIE_RUNNING, url], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    storage = make_storage(url, study_name="k", heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name="k", storage=storage)
    (dead,) = study.get_trials(deepcopy=False)
    assert dead.state == TrialState.RUNNING

    def failed():
        optuna.storages.fail_stale_trials(study)  # what every worker does before a trial
        return study.get_trials(deepcopy=False)[0].state == TrialState.FAIL

    poll(failed, "the dead trial marked FAIL")
    trials = study.get_trials(deepcopy=False)
    assert "without a heartbeat" in trials[0].user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert "fail_reason" not in retry[0].user_attrs


def test_stale_heartbeat_stores_a_reason(tmp_path):
    from sparsesearch.storage import make_storage

    url = f"journal:{tmp_path / 'k.log'}"
    storage = make_storage(url, study_name="k", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="k", direction="maximize")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # it beat once, then its worker died

    def failed():
        optuna.storages.fail_stale_trials(study)
        return study.get_trials(deepcopy=False)[0].state == TrialState.FAIL

    poll(failed, "the stale trial marked FAIL")
    reason = study.get_trials(deepcopy=False)[0].user_attrs["fail_reason"]
    assert "last heartbeat" in reason and "grace period of 1 s" in reason


BLOCKING_MODEL = """\
import time

import torch
from torch import nn
from torch.nn.utils import parametrize


class Blocking(nn.Module):
    \"\"\"A digits MLP whose pruned (masked) copy never finishes a forward pass: its trial
    runs until it is stopped, however fast the machine.\"\"\"

    def __init__(self, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        while parametrize.is_parametrized(self.fc1):
            time.sleep(0.05)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make(num_classes=10, **kwargs):
    return Blocking(num_classes)
"""


@pytest.mark.parametrize("signum, rc, said", [(15, 143, "terminated (SIGTERM)"), (2, 130, "interrupted (Ctrl-C)")])
def test_sigterm_and_ctrl_c_fail_the_running_trial_with_a_reason(tmp_path, signum, rc, said):
    (tmp_path / "blocking_ss.py").write_text(BLOCKING_MODEL)
    study_file = tiny_study(tmp_path, "sig")
    study_file.write_text(study_file.read_text().replace('name = "digits-mlp"', 'name = "blocking_ss:make"'))
    db = tmp_path / "runs" / "sig" / "study.db"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]])}
    proc = subprocess.Popen([sys.executable, "-m", "sparsesearch", "run", str(study_file), "--quiet",
                             "--no-report"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def running():
            if proc.poll() is not None:
                return True  # ended early: the assertions below say why
            if not db.is_file():
                return False
            from sparsesearch.storage import make_storage

            try:  # make_storage: retries a schema the run is creating at this moment
                storage = make_storage(f"sqlite:///{db}", study_name="sig", heartbeat_interval=None)
                study = optuna.load_study(study_name="sig", storage=storage)
            except KeyError:
                return False  # the study is not created yet
            return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

        poll(running, "a RUNNING trial")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == rc, err
    assert "resume with: sparsesearch run" in err and "Traceback" not in err
    study = optuna.load_study(study_name="sig", storage=f"sqlite:///{db}")
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith(said)


# ---------------------------------------------------------------------------------------------
# 8. two runs creating one new SQLite database at the same moment

TOGETHER = """\
import sys, time
from pathlib import Path
from sparsesearch.storage import make_storage
folder, me, other, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for k in range(rounds):
    (folder / f"ready-{k}-{me}").touch()
    while not (folder / f"ready-{k}-{other}").exists():  # barrier: both open database k at once
        if (folder / f"failed-{other}").exists():
            sys.exit("the other process failed")
        time.sleep(0.001)
    try:
        make_storage(f"sqlite:///{folder / f'db{k}.db'}", study_name="s", heartbeat_interval=None)
    except BaseException:
        (folder / f"failed-{me}").touch()
        raise
print("ok")
"""


def test_two_processes_create_a_new_sqlite_schema_together(tmp_path):
    rounds = 20  # the race is likely, not certain, in one round
    procs = [subprocess.Popen([sys.executable, "-c", TOGETHER, str(tmp_path), me, other, str(rounds)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    for k in range(rounds):
        assert optuna.study.get_all_study_names(f"sqlite:///{tmp_path / f'db{k}.db'}") == []


# ---------------------------------------------------------------------------------------------
# 7. journal files: a torn last record is repaired, damage in the middle refused


def _journal_with_trials(path: Path, n: int) -> None:
    from sparsesearch.storage import make_storage

    storage = make_storage(f"journal:{path}", study_name="j", heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="j", direction="maximize",
                                load_if_exists=True)
    for i in range(n):
        study.add_trial(optuna.trial.create_trial(value=float(i)))


def _count(path: Path) -> int:
    from sparsesearch.storage import make_storage

    storage = make_storage(f"journal:{path}", study_name="j", heartbeat_interval=None)
    return len(optuna.load_study(study_name="j", storage=storage).get_trials(deepcopy=False))


def test_a_torn_last_journal_record_is_repaired_with_a_backup(tmp_path, caplog):
    path = tmp_path / "journal.log"
    _journal_with_trials(path, 2)
    whole = path.read_bytes()
    torn = b'{"op_code":4,"worker_id":"dead-worker","study_id":0,"datetime_sta'
    path.write_bytes(whole + torn)  # a worker killed in the middle of its write
    with caplog.at_level("WARNING", logger="sparsesearch"):
        _journal_with_trials(path, 1)  # the next run appends
    assert _count(path) == 3  # the file stays readable: nothing glued onto the torn record
    (backup,) = tmp_path.glob("journal.log.torn-*.bak")
    assert backup.read_bytes() == whole + torn
    warned = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert len(warned) == 1 and str(backup) in warned[0] and "\n" not in warned[0]


def test_a_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "journal.log"
    _journal_with_trials(path, 2)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # cut just before the newline
    _journal_with_trials(path, 1)
    assert _count(path) == 3 and not list(tmp_path.glob("*.bak"))


def test_garbage_inside_a_journal_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "journal.log"
    _journal_with_trials(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b'{"op_code":4,"worker_id" GARBAGE\n')
    path.write_bytes(b"".join(lines))
    damaged = path.read_bytes()
    with pytest.raises(SparsesearchError) as info:
        _count(path)
    msg = str(info.value)
    assert str(path) in msg and "line 3 of" in msg and "\n" not in msg
    rc, out, err = cli(capsys, "report", "--storage", f"journal:{path}", "--out", tmp_path / "r")
    assert rc == 2 and str(path) in one_error_line(err)
    assert path.read_bytes() == damaged  # never appended to nor "repaired"
