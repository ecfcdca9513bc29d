"""Reports from a stored study alone: Markdown, PNG plots, noise, heuristics, errors."""

from __future__ import annotations

import math
import re

import optuna
import pytest
from optuna.trial import TrialState

from sparsesearch.errors import SparsesearchError
from sparsesearch.report import open_study, sqlite_path, standard_error, write_report

PNG = b"\x89PNG\r\n\x1a\n"
LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _recipe(lr: float) -> dict:
    return {"format": "sparsesearch.recipe/1", "strategy": "magnitude", "sparsity": {},
            "retrain": {"lr": lr, "epochs": 3}}


def _attrs(heuristic: str | None, params: int, i: int) -> dict:
    sparsity = {n: round(0.9 + 0.02 * ((i + k) % 4), 4) for k, n in enumerate(LAYERS)}
    return {"params": params, "sparsity": sparsity, "strategy": "magnitude", "heuristic": heuristic,
            "recipe": _recipe(0.01 * (i + 1))}


def make_study(storage: str, name: str, *, pareto: bool = False) -> optuna.Study:
    """A study shaped like sparsesearch.search's, without any training."""
    study = optuna.create_study(
        storage=storage, study_name=name,
        directions=["maximize", "minimize"] if pareto else ["maximize"],
    )
    for key, value in {"budget_params": 1000, "total_params": 50000, "val_size": 1000,
                       "dense_val_accuracy": 0.97, "dense_test_accuracy": 0.965,
                       "settings": {"model": "lenet5", "data": "mnist-5k", "strategies": ["magnitude"],
                                    "objective": "pareto" if pareto else "accuracy", "seed": 0}}.items():
        study.set_user_attr(key, value)
    seeds = [("uniform", 0.90), ("global", 0.93), ("lamp", 0.94), ("erk", 0.92), ("lamp", 0.935)]
    for i, (h, v) in enumerate(seeds):
        attrs = _attrs(h, 1000 - i, i)
        study.add_trial(optuna.trial.create_trial(
            values=[v, attrs["params"]] if pareto else [v], user_attrs=attrs, state=TrialState.COMPLETE,
            intermediate_values={} if pareto else {0: v - 0.05, 1: v},
        ))
    for i, v in enumerate([0.95, 0.89, 0.952, 0.91]):
        attrs = _attrs(None, 700 + 50 * i, i + 5)
        study.add_trial(optuna.trial.create_trial(
            values=[v, attrs["params"]] if pareto else [v], user_attrs=attrs, state=TrialState.COMPLETE,
        ))
    if not pareto:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, intermediate_values={0: 0.5}, user_attrs=_attrs(None, 900, 9),
        ))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, user_attrs={"fail_reason": "NonFiniteLossError: loss is nan\nat epoch 0"},
    ))
    best = max(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.values[0])
    study.set_user_attr("test_accuracy", {str(best.number): 0.948})
    return study


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_report_from_storage_alone(tmp_path, storage):
    make_study(storage, "s")
    study = open_study(storage, "s")  # a fresh load: only what is stored
    report = write_report(study, tmp_path / "out", storage=storage)
    text = report.read_text()
    everything = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    plots = [n for n in everything if n.endswith(".png")]
    assert plots == ["accuracy_vs_params.png", "history.png", "layer_sparsity.png", "learning_curves.png"]
    assert [n for n in everything if n.endswith(".svg")] == [n[:-4] + ".svg" for n in plots]
    for n in plots:
        assert (tmp_path / "out" / "plots" / (n[:-4] + ".svg")).read_text().lstrip().startswith("<?xml")
    for name in plots:
        data = (tmp_path / "out" / "plots" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        import matplotlib.image

        img = matplotlib.image.imread(tmp_path / "out" / "plots" / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert f"](plots/{name})" in text

    # best vs each heuristic: every heuristic listed once, the best seed of lamp (0.94, not 0.935)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\*\*best\*\*|uniform|global|lamp|erk|dense) .*$", text, re.M)}
    assert set(rows) == {"**best**", "uniform", "global", "lamp", "erk", "dense"}
    assert "#7" in rows["**best**"] and "95.20 %" in rows["**best**"] and "94.80 %" in rows["**best**"]
    assert "94.00 %" in rows["lamp"] and "#2" in rows["lamp"]
    # test accuracy only where stored: the heuristics show a dash
    for h in ("uniform", "global", "lamp", "erk"):
        assert rows[h].count("—") >= 1 and "94.80" not in rows[h]
    assert "96.50 %" in rows["dense"] and "50,000" in rows["dense"]
    # compression and params
    assert "800" in rows["**best**"] and "62.5×" in rows["**best**"]
    # the validation noise: n and sqrt(p(1-p)/n)
    se = 100 * math.sqrt(0.952 * 0.048 / 1000)
    assert "**1,000** samples" in text and f"**{se:.2f} percentage points**" in text
    assert "+1.20 points from the best heuristic (lamp, #2)" in text
    # bookkeeping: trial states, failed reasons on one line, how to open it elsewhere
    assert "8 complete" in text or "9 complete" in text
    assert "1 pruned" in text and "1 fail" in text
    assert "NonFiniteLossError: loss is nan at epoch 0" in text
    assert f"optuna-dashboard '{storage}'" in text
    assert "Budget: at most 1,000 of 50,000 parameters" in text
    # per-layer table of the best trial
    for layer in LAYERS:
        assert f"| `{layer}` |" in text


def test_pareto_report_lists_the_front(tmp_path, storage):
    make_study(storage, "p", pareto=True)
    study = open_study(storage, "p")
    text = write_report(study, tmp_path / "out").read_text()
    assert "## Pareto front" in text
    assert "pruners do not work in multi-objective studies" in text
    front = {t.number for t in study.best_trials}
    section = text.split("## Pareto front")[1].split("##")[0]
    for n in front:
        assert f"| #{n} |" in section
    assert (tmp_path / "out" / "plots" / "accuracy_vs_params.png").read_bytes().startswith(PNG)


def test_report_of_an_empty_study(tmp_path, storage):
    optuna.create_study(storage=storage, study_name="e")
    text = write_report(open_study(storage, "e"), tmp_path / "out").read_text()
    assert "No COMPLETE trial yet" in text
    assert (tmp_path / "out" / "plots" / "history.png").read_bytes().startswith(PNG)


def test_password_is_masked_in_the_report(tmp_path, storage):
    study = make_study(storage, "m")
    text = write_report(study, tmp_path / "out", storage="postgresql://bob:s3cret@db.example/x").read_text()
    assert "s3cret" not in text and "bob:***@db.example" in text


def test_open_study_errors(tmp_path, storage):
    with pytest.raises(SparsesearchError, match="no study database at"):
        open_study(f"sqlite:///{tmp_path / 'absent.db'}", "x")
    assert not (tmp_path / "absent.db").exists()  # never creates one
    make_study(storage, "a")
    make_study(storage, "b")
    with pytest.raises(SparsesearchError, match=r"no study named 'c' .*studies there: a, b"):
        open_study(storage, "c")
    with pytest.raises(SparsesearchError, match="give --study-name"):
        open_study(storage, None)
    with pytest.raises(SparsesearchError, match="cannot open storage"):
        open_study("nosuchdb://x", "a")


def test_helpers():
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert standard_error(1.0, 10) == 0.0
    assert math.isnan(standard_error(0.5, 0))
    assert sqlite_path("sqlite:///runs/x/study.db").as_posix() == "runs/x/study.db"
    assert sqlite_path("sqlite:////abs/x.db").as_posix() == "/abs/x.db"
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://h/db") is None


def test_report_from_a_journal_storage(tmp_path):
    storage_module = pytest.importorskip("sparsesearch.storage")
    path = tmp_path / "journal.log"
    make_study(storage_module.make_storage(f"journal:{path}", study_name="j", heartbeat_interval=None), "j")
    study = open_study(f"journal:{path}", None)  # the only study there
    text = write_report(study, tmp_path / "out", storage=f"journal:{path}").read_text()
    assert "## Best trial vs the heuristics" in text and "95.20 %" in text
    with pytest.raises(SparsesearchError, match="no study database at"):
        open_study(f"journal:{tmp_path / 'absent.log'}", "j")


def _open_elsewhere(text: str) -> list[str]:
    section = text.split("## Open the study elsewhere")[1]
    return section.split("```sh\n")[1].split("\n```")[0].splitlines()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_open_elsewhere_commands_work(kind, tmp_path, monkeypatch):
    """The printed `optuna trials` command runs (issue 14: `journal:PATH` is no storage the
    optuna CLI or optuna-dashboard reads); URLs relative to the directory the run was in."""
    import json
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from sparsesearch.storage import make_storage

    optuna_cli = Path(sys.executable).with_name("optuna")
    if not optuna_cli.exists():
        pytest.skip("the optuna CLI is not installed next to this Python")
    monkeypatch.chdir(tmp_path)
    url = "journal:runs/j/journal.log" if kind == "journal" else "sqlite:///runs/j/study.db"
    (tmp_path / "runs" / "j").mkdir(parents=True)
    study = make_study(make_storage(url, study_name="my study", heartbeat_interval=None), "my study")
    commands = _open_elsewhere(write_report(study, tmp_path / "out", storage=url).read_text())
    dashboard = next(shlex.split(c) for c in commands if c.startswith("optuna-dashboard "))
    trials = next(shlex.split(c) for c in commands if c.startswith("optuna trials "))
    if kind == "journal":  # optuna-dashboard reads a journal file given as its path
        assert dashboard == ["optuna-dashboard", "runs/j/journal.log"]
        assert "journal:" not in " ".join(commands)
    else:
        assert dashboard == ["optuna-dashboard", url]
    proc = subprocess.run([str(optuna_cli), *trials[1:], "-f", "json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == len(study.trials)


def test_parameter_importances_and_learning_curves(tmp_path, storage):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(storage=storage, study_name="imp", direction="maximize")
    dists = {"lr": FloatDistribution(1e-3, 1e-1, log=True),
             "alloc:heuristic": CategoricalDistribution(["lamp", "erk"])}
    for i in range(8):
        lr = 1e-3 * 1.8 ** i
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "alloc:heuristic": "lamp" if i % 2 else "erk"}, distributions=dists,
            value=0.5 + 0.05 * i, intermediate_values={1: 0.4 + 0.04 * i, 2: 0.5 + 0.05 * i},
            user_attrs={"params": 100, "phase": "screen", "epochs": 2}))
    text = write_report(study, tmp_path / "imp", storage=storage).read_text()
    assert "## Parameter importances" in text and "| `lr` |" in text
    assert (tmp_path / "imp" / "plots" / "learning_curves.png").read_bytes().startswith(PNG)
    assert (tmp_path / "imp" / "plots" / "learning_curves.svg").is_file()
