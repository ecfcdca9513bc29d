"""The `sparsesearch` command, run as a subprocess: run/resume, report, export, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from sparsesearch.cli import main, scrub
from sparsesearch.errors import SparsesearchError

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "digits-mlp.toml"
PNG = b"\x89PNG\r\n\x1a\n"


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "sparsesearch", *map(str, args)]


# one torch thread per process: these models are tiny, and on a busy machine several
# spinning OpenMP threads per process cost far more than they bring
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSESEARCH_DB_RETRIES": "0"}


def run_cli(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


def run_many(jobs: dict[str, list[object]], cwd: Path, timeout: float = 300) -> dict[str, tuple[int, str, str]]:
    """Run several CLI invocations at once (each pays the torch import): name -> (rc, out, err)."""
    env = ENV  # SPARSESEARCH_DB_RETRIES=0: an unreachable database fails at once
    procs = {
        name: subprocess.Popen(command(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
        for name, args in jobs.items()
    }
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=timeout)
        out[name] = (p.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """`run studies/digits-mlp.toml --n-trials 5 --storage sqlite:///X.db --study-name t`, twice."""
    cwd = tmp_path_factory.mktemp("cli")
    args = ["run", STUDY, "--n-trials", 5, "--storage", "sqlite:///X.db", "--study-name", "t"]
    first = run_cli(*args, cwd=cwd)
    second = run_cli(*args, "--quiet", cwd=cwd)
    return cwd, first, second


def test_run_then_resume(ran):
    cwd, first, second = ran
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    # progress on stderr (one line per trial when not a terminal); --quiet has none
    assert "trial 5/5" in first.stderr and "best" in first.stderr and "ETA" in first.stderr
    assert "trial 1/5" not in second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    assert "epochs " in first.stderr and " final" in first.stderr  # compute spent; the finalists
    # screening trials (the 4 seeds first), then the best retrained as the finalist: the study
    # is complete, so running it again adds nothing and shows the same final model
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{cwd / 'X.db'}")
    n = len(study.trials)
    assert n >= 5
    assert f"{n} trials in sqlite:///X.db" in first.stdout
    assert f"{n} trials in sqlite:///X.db" in second.stdout
    assert "best trial #" in second.stdout
    assert sum(t.user_attrs.get("phase") == "final" for t in study.trials) == 1
    assert study.user_attrs["epochs_trained"] <= 40
    seeds = [t for t in study.trials if t.user_attrs.get("heuristic") and t.user_attrs.get("phase") != "final"]
    assert len(seeds) == 4  # enqueued once, not again on resume
    attrs = study.user_attrs
    assert attrs["sparsesearch_config"]["name"] == "t"
    assert list(attrs["test_accuracy"]) == [str(attrs["best_trial"])]
    run_dir = cwd / "runs" / "t"
    assert len(list(run_dir.glob("dense-*.pt"))) == 1  # trained once, reused on resume
    for name in ("best.pt", "best.recipe.json", "report.md"):
        assert (run_dir / name).is_file(), name
    state = torch.load(run_dir / "best.pt", weights_only=True)
    kept = sum(int(torch.count_nonzero(v)) for v in state.values())
    assert kept <= attrs["budget_params"]
    recipe = json.loads((run_dir / "best.recipe.json").read_text())
    assert recipe["extra"]["trial"] == attrs["best_trial"] and recipe["extra"]["study"] == "t"
    report = (run_dir / "report.md").read_text()
    assert "## Compute: how it was spent and where the final model came from" in report
    assert f"The final model is trial **#{attrs['best_trial']}**" in report
    assert f"spent **{attrs['epochs_trained']}**" in report
    for png in ("history.png", "learning_curves.png", "accuracy_vs_compute.png", "accuracy_vs_params.png",
                "layer_sparsity.png"):
        assert (run_dir / "plots" / png).read_bytes().startswith(PNG)


def test_report_and_export_from_the_storage(ran):
    cwd, first, second = ran
    assert second.returncode == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{cwd / 'X.db'}")
    best = study.user_attrs["best_trial"]
    other = next(t.number for t in study.trials
                 if t.state == optuna.trial.TrialState.COMPLETE and t.number != best)
    results = run_many({
        "report": ["report", "--storage", "sqlite:///X.db", "--study-name", "t", "--out", "rep"],
        "export": ["export", "--storage", "sqlite:///X.db", "--study-name", "t", "--trial", other,
                   "--out", "t.pt"],
        "best": ["export", STUDY, "--storage", "sqlite:///X.db", "--study-name", "t", "--out", "best"],
    }, cwd)
    rc, out, err = results["report"]
    assert rc == 0, err
    import matplotlib.image

    plots = sorted((cwd / "rep" / "plots").glob("*.png"))
    assert [p.name for p in plots] == ["accuracy_vs_compute.png", "accuracy_vs_params.png", "history.png",
                                       "layer_sparsity.png", "learning_curves.png"]
    for p in plots:
        assert p.read_bytes().startswith(PNG)
        assert matplotlib.image.imread(p).shape[0] > 100
    text = (cwd / "rep" / "report.md").read_text()
    assert "## Best trial vs the heuristics" in text and "standard error" in text

    rc, out, err = results["export"]
    assert rc == 0, err
    assert f"trial #{other} (rebuilt" in out and "differs" not in err
    state = torch.load(cwd / "t.pt", weights_only=True)
    assert sum(int(torch.count_nonzero(v)) for v in state.values()) <= study.user_attrs["budget_params"]
    assert json.loads((cwd / "t.recipe.json").read_text())["extra"]["trial"] == other

    rc, out, err = results["best"]
    assert rc == 0, err
    assert f"trial #{best} (from best.pt)" in out
    exported = list((cwd / "best").iterdir())
    names = {p.name for p in exported} - {"model.pt2", "model.onnx"}  # + the torch.export program and ONNX
    assert names >= {"recipe.json"} and len(names) == 2


def test_optuna_cli_reads_the_study(ran):
    cwd, _, second = ran
    assert second.returncode == 0
    optuna_cli = Path(sys.executable).with_name("optuna")
    if not optuna_cli.exists():
        pytest.skip("the optuna CLI is not installed next to this Python")
    proc = subprocess.run(
        [str(optuna_cli), "trials", "--storage", "sqlite:///X.db", "--study-name", "t", "-f", "json"],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    trials = json.loads(proc.stdout)
    assert len(trials) == len(optuna.load_study(study_name="t", storage=f"sqlite:///{cwd / 'X.db'}").trials)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert complete and all("params" in t["user_attrs"] and "sparsity" in t["user_attrs"] for t in complete)


# -- errors: one line on stderr, exit 2 ---------------------------------------------------------

MINIMAL = """
[model]
name = "digits-mlp"
[data]
name = "digits"
[budget]
fraction = 0.1
"""


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "malformed.toml").write_text('[study]\nname = "x"\nn_trials = = 3\n')
    (tmp_path / "unknown-key.toml").write_text(MINIMAL + "[space]\nlrr = 0.1\n")
    (tmp_path / "no-root.toml").write_text(MINIMAL.replace('name = "digits"', 'name = "mnist"\nroot = "nowhere"'))
    (tmp_path / "no-model.toml").write_text(MINIMAL.replace('name = "digits-mlp"', 'name = "lenet-6"'))
    results = run_many({
        "malformed": ["run", "malformed.toml"],
        "unknown-key": ["run", "unknown-key.toml"],
        "no-root": ["run", "no-root.toml"],
        "no-model": ["run", "no-model.toml", "--storage", f"sqlite:///{tmp_path / 'm.db'}"],
    }, tmp_path)
    expected = {
        "malformed": ["invalid TOML", "line 3", "column"],
        "unknown-key": ["unknown key 'space.lrr'", "did you mean 'space.lr'?"],
        "no-root": ["MNIST not found under", "nowhere", "train-images-idx3-ubyte"],
        "no-model": ["unknown model 'lenet-6'", "lenet5"],
    }
    for name, (rc, out, err) in results.items():
        assert rc == 2, (name, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("sparsesearch: error: "), (name, err)
        for part in expected[name]:
            assert part in lines[0], (name, part, lines[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "s.toml", "--storage", "postgresql://bob:s3cret@127.0.0.1:1/nodb"],
         "cannot open storage postgresql+psycopg2://bob:***@127.0.0.1:1/nodb"),
        (["report", "--storage", "sqlite:///absent.db", "--study-name", "x"], "no study database at absent.db"),
        (["export", "--storage", "sqlite:///absent.db", "--out", "m.pt"], "no study database at absent.db"),
        (["run", "absent.toml"], "study file not found: absent.toml"),
        (["run", "s.toml", "--n-trials", "-1"], "n_trials must be >= 0"),
    ],
)
def test_more_user_errors_in_process(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSESEARCH_DB_RETRIES", "0")
    (tmp_path / "s.toml").write_text(MINIMAL)
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsesearch: error: "), err
    assert message in lines[0]
    assert "s3cret" not in out + err  # the password never shows
    assert not (tmp_path / "absent.db").exists()


def test_strategies_lists_the_builtins():
    proc = run_cli("strategies", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.strip().splitlines()}
    assert {"magnitude", "random", "l1-filter", "gradient"} <= set(rows)
    assert rows["magnitude"][1] == "weight" and rows["l1-filter"][1] == "channel"
    assert "needs" in rows["gradient"] and "data-free" in rows["magnitude"]
    assert rows["magnitude"][-1] == "sparsesearch"


# -- in-process: argument handling and error mapping (fast) -------------------------------------


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["export", "--storage", "sqlite:///x.db"])  # --out is required
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "run" in capsys.readouterr().out


def test_a_bug_exits_1_with_a_traceback(monkeypatch, capsys):
    import sparsesearch.cli as cli

    def boom(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_strategies", boom)
    assert cli.main(["strategies"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error" in err


@pytest.mark.parametrize("exc, status", [
    (ValueError("a check deep in the code"), 1),  # not a message for the user: a bug
    (OSError("no filename: not about a path the user gave"), 1),
    (SparsesearchError("the user's mistake"), 2),
    (FileNotFoundError(2, "No such file or directory", "missing.pt"), 2),
])
def test_only_sparsesearch_errors_and_file_errors_are_user_errors(monkeypatch, capsys, exc, status):
    import sparsesearch.cli as cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_strategies", fail)
    assert cli.main(["strategies"]) == status
    err = capsys.readouterr().err
    if status == 2:
        assert err.count("\n") == 1 and "Traceback" not in err and str(exc).split(":")[0] in err
    else:
        assert "Traceback" in err and "internal error" in err


def test_scrub_masks_passwords():
    assert scrub("x postgresql://u:p@h/d\nmysql+pymysql://a:b@c:3/d") == "x postgresql://u:***@h/d mysql+pymysql://a:***@c:3/d"
    assert scrub("sqlite:///runs/x/study.db") == "sqlite:///runs/x/study.db"


MAC_STUDY = """\
[study]
name = "macs"
seed = 0
n_trials = 4

[model]
name = "digits-cnn"

[data]
name = "digits"

[budget]
macs_fraction = 0.3

[search]
strategies = ["l1-filter"]
heuristics = ["uniform", "lamp"]

[space]
epochs = 2

[compute]
epochs = 16

[dense]
epochs = 3
lr = 0.1
optimizer = "sgd"
"""


def test_a_mac_budget_study_with_two_workers_is_reported_and_exported(tmp_path):
    """The MAC-budget bugs of round 1: the second worker must not enqueue the seeds again (it
    waited for budget_params), the report shows the MAC budget, export rebuilds the study with
    its MAC budget (not budget=1)."""
    (tmp_path / "macs.toml").write_text(MAC_STUDY)
    run = run_cli("run", "macs.toml", "--workers", 2, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    storage = f"journal:{tmp_path / 'runs' / 'macs' / 'journal.log'}"
    from sparsesearch.storage import make_storage

    study = optuna.load_study(study_name="macs", storage=make_storage(storage, study_name="macs",
                                                                       heartbeat_interval=None))
    attrs = study.user_attrs
    assert attrs["budget_metric"] == "macs" and "budget_params" not in attrs
    seeds = [t for t in study.trials if t.user_attrs.get("heuristic") and t.user_attrs.get("phase") != "final"]
    assert sorted(t.user_attrs["heuristic"] for t in seeds) == ["lamp", "uniform"]  # enqueued once
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.user_attrs["macs"] <= attrs["budget_macs"]
    report = (tmp_path / "runs" / "macs" / "report.md").read_text()
    assert f"at most {attrs['budget_macs']:,} of {attrs['total_macs']:,} multiply-accumulates" in report
    exported = run_cli("export", "--storage", storage, "--study-name", "macs", "--out", "out", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "budget=1" not in exported.stdout + exported.stderr
    from sparsesearch.export import config_from_study

    cfg = config_from_study(study)
    assert cfg.budget_metric == "macs" and cfg.budget == 0.3


# -- issue 14: the commands the CLI prints work --------------------------------------------------


def console_script() -> list[str]:
    """The installed `sparsesearch` console script (not `python -m`), next to this Python."""
    script = Path(sys.executable).with_name("sparsesearch")
    if not script.exists():
        pytest.skip("the sparsesearch console script is not installed next to this Python")
    return [str(script)]


def test_the_resume_command_printed_after_ctrl_c_resumes(tmp_path):
    import shlex
    import signal

    args = ["run", STUDY, "--runs-dir", "out", "--study-name", "r", "--seed", "0", "--no-report"]
    proc = subprocess.Popen(command(*args), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    seen = []
    for line in proc.stderr:  # the first finished trial's progress line, then Ctrl-C
        seen.append(line)
        if line.startswith("trial 1/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 130, "".join(seen) + rest
    hint = next(line for line in rest.splitlines() if "resume with: " in line)
    printed = shlex.split(hint.split("resume with: ", 1)[1])
    assert printed[:2] == ["sparsesearch", "run"]
    assert ["--runs-dir", "out"] == printed[printed.index("--runs-dir"):][:2]
    assert ["--seed", "0"] == printed[printed.index("--seed"):][:2] and "--no-report" in printed
    storage = f"sqlite:///{tmp_path / 'out' / 'r' / 'study.db'}"
    before = len(optuna.load_study(study_name="r", storage=storage).trials)
    resumed = subprocess.run(console_script() + printed[1:] + ["--n-trials", "1"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "runs").exists()  # the same runs folder, not a fresh study in runs/
    study = optuna.load_study(study_name="r", storage=storage)
    assert len(study.trials) > before
    assert len(list((tmp_path / "out" / "r").glob("dense-*.pt"))) == 1  # the dense model reused


MODULE_STUDY = """\
[study]
name = "mod"
n_trials = 1

[model]
name = "mymod:factory"

[data]
name = "digits"

[budget]
fraction = 0.2

[search]
heuristics = ["uniform"]

[space]
epochs = 1

[compute]
epochs = 3

[dense]
epochs = 1
lr = 0.1
"""


def test_a_module_function_model_next_to_the_study_file_imports_under_the_console_script(tmp_path):
    """`model = "mymod:factory"` with mymod.py next to the study file (which imports a helper in
    the working directory), run by the console script from another folder."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mod.toml").write_text(MODULE_STUDY)
    (tmp_path / "studies" / "mymod.py").write_text(
        "import cwdhelper\n\ndef factory(**kwargs):\n    return cwdhelper.mlp()\n")
    (tmp_path / "cwdhelper.py").write_text(
        "from torch import nn\n\ndef mlp():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n")
    run = subprocess.run(console_script() + ["run", "studies/mod.toml", "--quiet", "--no-report"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "ModuleNotFoundError" not in run.stderr and "best trial #" in run.stdout


MLP_STUDY = MODULE_STUDY.replace('"mymod:factory"', '"digits-mlp"')

RAISING_MODEL = '''\
from torch import nn


class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        raise ValueError("Picky takes no 8x8 images")


def factory(**kwargs):
    return Picky()
'''


def test_debug_shows_the_file_and_line_of_a_users_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "picky_model_14.py").write_text(RAISING_MODEL)
    (tmp_path / "studies" / "p.toml").write_text(MODULE_STUDY.replace("mymod:", "picky_model_14:"))
    assert main(["run", "studies/p.toml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsesearch: error: ") and "Picky takes no" in lines[0]
    assert main(["--debug", "run", "studies/p.toml"]) == 2
    err = capsys.readouterr().err
    where = tmp_path / "studies" / "picky_model_14.py"
    assert f'File "{where}", line 10, in forward' in err, err
    assert 'raise ValueError("Picky takes no 8x8 images")' in err
    assert err.strip().splitlines()[-1] == lines[0]  # then the same error line, exit 2


def test_verbose_and_quiet_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPARSESEARCH_OPTUNA_VERBOSE", raising=False)
    (tmp_path / "s.toml").write_text(MLP_STUDY)
    assert main(["-q", "run", "s.toml", "--no-report"]) == 0  # as `run --quiet`
    out, err = capsys.readouterr()
    assert "best trial #" in out
    assert "trial 1/1" not in err and "dense model" not in err
    assert main(["-v", "run", "s.toml", "--no-report", "--study-name", "v"]) == 0
    out, err = capsys.readouterr()
    assert "best trial #" in out and "trial 1/1" in err  # the progress display
    assert "A new study created in RDB with name: v" in err  # Optuna's info lines
    assert "SPARSESEARCH_OPTUNA_VERBOSE" not in os.environ  # restored
    with pytest.raises(SystemExit) as info:
        main(["-v", "-q", "strategies"])
    assert info.value.code == 2
