"""What a study may hold and what opening one may do: no stored credentials, no paths outside
the runs folder from study names, no code run from an untrusted study's configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest

from conftest_pg import pg_url, postgres_server  # noqa: F401 - pytest fixtures
from sparsesearch.cli import main, scrub
from sparsesearch.config import ConfigError, load_study_config
from sparsesearch.errors import SparsesearchError
from sparsesearch.export import CONFIG_ATTR
from sparsesearch.storage import check_study_name, mask_url, resolve_storage_spec, run_folder, url_secrets

TINY = """\
[study]
name = "{name}"
n_trials = 1
seed = 0
{storage}

[model]
name = "{model}"

[data]
name = "{data}"

[budget]
fraction = 0.2

[search]
heuristics = ["uniform"]

[space]
lr = 0.05
epochs = 1
allocation = false

[dense]
epochs = 1
lr = 0.1
"""


def tiny_study(folder: Path, name: str = "tiny", *, model: str = "digits-mlp", data: str = "digits",
               storage: str | None = None) -> Path:
    path = folder / f"{name}.toml"
    line = f"storage = {json.dumps(storage)}" if storage else ""
    path.write_text(TINY.format(name=name, model=model, data=data, storage=line))
    return path


def cli(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------------
# 1. credentials


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:p@ss@127.0.0.1/db", "postgresql://user:***@127.0.0.1/db"),
    ("postgresql+psycopg2://bob:s3cret@h:5432/d", "postgresql+psycopg2://bob:***@h:5432/d"),
    ("postgresql://u:a/b@h/d", "postgresql://u:***@h/d"),
    ("mysql+pymysql://u:pw@h/d?charset=utf8&password=zz", "mysql+pymysql://u:***@h/d?charset=utf8&password=***"),
    ("mysql://u@h/d", "mysql://u@h/d"),
    ("sqlite:///runs/a@b/study.db", "sqlite:///runs/a@b/study.db"),
    ("sqlite:////tmp/x:y@z.db", "sqlite:////tmp/x:y@z.db"),
    ("journal:runs/u:p@h/journal.log", "journal:runs/u:p@h/journal.log"),
    ("runs/x.log", "runs/x.log"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown
    for secret in url_secrets(url):
        assert secret not in mask_url(url).replace("***", "")


def test_scrub_hides_a_password_with_at_signs():
    line = scrub("cannot open storage postgresql://user:p@ss@127.0.0.1:1/db: refused")
    assert "p@ss" not in line and "ss@127" not in line
    assert "postgresql://user:***@127.0.0.1:1/db" in line


def test_the_stored_config_holds_no_password(tmp_path):
    cfg = load_study_config(tiny_study(tmp_path, storage="postgresql://bob:Hunter2pw@db.example/x"))
    stored = json.dumps(cfg.to_dict())
    assert "Hunter2pw" not in stored and "bob:***@db.example" in stored


def test_unreachable_storage_with_at_in_password_is_masked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSESEARCH_DB_RETRIES", "0")
    study = tiny_study(tmp_path)
    rc, out, err = cli(capsys, "run", study, "--storage", "postgresql://bob:p@ss@127.0.0.1:1/nodb",
                       "--runs-dir", tmp_path / "runs")
    assert rc == 2
    assert "p@ss" not in out + err and "ss@127" not in out + err
    assert "bob:***@127.0.0.1:1" in err and "%40" in err


def _everything_stored(storage: str, name: str) -> str:
    study = optuna.load_study(study_name=name, storage=resolve_storage_spec(storage, study_name=name))
    parts = [json.dumps(study.user_attrs, default=str),
             json.dumps(study._storage.get_study_system_attrs(study._study_id), default=str)]
    for t in study.get_trials(deepcopy=False):
        parts += [json.dumps(t.user_attrs, default=str), json.dumps(t.system_attrs, default=str),
                  json.dumps(t.params, default=str)]
    return "\n".join(parts)


def test_no_password_in_the_study_or_any_output(tmp_path, capsys, pg_url, monkeypatch):
    password = "Zq9-never-stored"
    url = pg_url.replace("postgres@", f"postgres:{password}@", 1)  # trust auth: any password works
    assert password in url
    monkeypatch.chdir(tmp_path)
    study = tiny_study(tmp_path, storage=url)
    outputs = []
    rc, out, err = cli(capsys, "run", study, "--runs-dir", "runs")
    assert rc == 0, err
    outputs.append(out + err)
    rc, out, err = cli(capsys, "report", "--storage", url, "--runs-dir", "runs", "--out", "rep")
    assert rc == 0, err
    outputs.append(out + err)
    rc, out, err = cli(capsys, "export", "--storage", url, "--runs-dir", "runs", "--out", "m.pt")
    assert rc == 0, err
    outputs.append(out + err)
    stored = _everything_stored(url, "tiny")
    assert CONFIG_ATTR in stored and "postgres:***@" in stored
    assert password not in stored
    for text in outputs:
        assert password not in text
    for path in [*tmp_path.rglob("*.md"), *tmp_path.rglob("*.json")]:
        assert password not in path.read_text(), path


# ---------------------------------------------------------------------------------------------
# 2. study names used in paths


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a/b", "..", ".", "a\\b", "nul\x00byte", ""])
def test_check_study_name_refuses_paths(name, tmp_path):
    with pytest.raises(SparsesearchError) as info:
        run_folder(tmp_path, name)
    assert "\n" not in str(info.value)


def test_check_study_name_accepts_plain_names():
    for name in ("digits-mlp", "a.b_c", "Ünïcode", "x..y"):
        assert check_study_name(name) == name


def test_nul_byte_in_study_file_name_is_one_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TINY.format(name="a\\u0000b", model="digits-mlp", data="digits", storage=""))
    with pytest.raises(ConfigError) as info:
        load_study_config(path)
    assert "study.name" in str(info.value) and "\n" not in str(info.value)


def _plant_study(storage: str, name: str, config: dict | None = None) -> None:
    """A study (as someone else could have made it) with one COMPLETE trial."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr("settings", {"model": "digits-mlp", "data": "digits", "seed": 0,
                                     "dense": {"epochs": 1}, "strategies": ["magnitude"]})
    study.set_user_attr("budget_params", 1000)
    study.set_user_attr("total_params", 6570)
    study.set_user_attr("val_size", 360)
    if config is not None:
        study.set_user_attr(CONFIG_ATTR, config)
    recipe = {"strategy": "magnitude", "sparsity": {"0": 0.5}, "retrain": {"lr": 0.05, "epochs": 1},
              "seed": 0, "granularity": "weight"}
    study.add_trial(optuna.trial.create_trial(
        value=0.5, user_attrs={"recipe": recipe, "params": 900, "strategy": "magnitude",
                               "granularity": "weight", "sparsity": {"0": 0.5}}))


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/sparsesearch-escaped-abs"])
def test_report_refuses_a_stored_name_that_leaves_the_runs_folder(tmp_path, capsys, name, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    storage = f"sqlite:///{tmp_path / 'evil.db'}"
    _plant_study(storage, name)
    before = {p for p in tmp_path.rglob("*")}
    for command in (["report"], ["export", "--out", "m.pt"]):
        rc, out, err = cli(capsys, *command, "--storage", storage, "--runs-dir", "runs")
        assert rc == 2, err
        assert err.count("\n") == 1 and "runs folder" in err
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written anywhere
    assert not Path("/tmp/sparsesearch-escaped-abs").exists()


# ---------------------------------------------------------------------------------------------
# 3. a stored configuration is not trusted


EVIL = """\
from pathlib import Path
Path({marker!r}).write_text("imported")

def make(**kwargs):
    Path({marker!r}).write_text("called")
    raise SystemExit("the planted function ran")
"""


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module whose import (or call) creates a file, like ``os:system`` would run a command."""
    marker = tmp_path / "PWNED"
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "evilmod_ss.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(pkg))
    return marker


@pytest.mark.parametrize("where", ["model", "data"])
def test_stored_module_function_is_not_run_without_trust(tmp_path, capsys, evil_module, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'their.db'}"
    config = load_study_config(tiny_study(tmp_path, "theirs")).to_dict()
    config[where] = "evilmod_ss:make"
    _plant_study(storage, "theirs", config)
    rc, out, err = cli(capsys, "export", "--storage", storage, "--runs-dir", "runs", "--out", "m.pt")
    assert rc == 2 and not evil_module.exists()
    assert err.count("\n") == 1 and "--trust-study" in err and "evilmod_ss:make" in err
    assert not (tmp_path / "m.pt").exists()


def test_os_system_in_stored_settings_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'their.db'}"
    _plant_study(storage, "theirs")
    study = optuna.load_study(study_name="theirs", storage=storage)
    study.set_user_attr("settings", {"model": "os:system", "data": "digits", "seed": 0})
    rc, out, err = cli(capsys, "export", "--storage", storage, "--runs-dir", "runs", "--out", "m.pt")
    assert rc == 2 and "'os:system'" in err and "--trust-study" in err


def test_report_of_an_untrusted_structured_study_runs_nothing(tmp_path, capsys, evil_module, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'their.db'}"
    config = load_study_config(tiny_study(tmp_path, "theirs")).to_dict()
    config["model"] = "evilmod_ss:make"
    _plant_study(storage, "theirs", config)
    study = optuna.load_study(study_name="theirs", storage=storage)
    study.add_trial(optuna.trial.create_trial(  # the best: structured, so latency is measured
        value=0.9, user_attrs={"recipe": {"strategy": "l1-filter", "sparsity": {}}, "params": 800,
                               "granularity": "channel"}))
    (tmp_path / "runs" / "theirs").mkdir(parents=True)
    (tmp_path / "runs" / "theirs" / "dense-0.pt").write_bytes(b"")
    rc, out, err = cli(capsys, "report", "--storage", storage, "--runs-dir", "runs")
    assert rc == 0, err
    assert not evil_module.exists()
    report = (tmp_path / "runs" / "theirs" / "report.md").read_text()
    assert "Latency not measured" in report and "--trust-study" in report


def test_trust_study_allows_the_stored_function(tmp_path, capsys, evil_module, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'mine.db'}"
    config = load_study_config(tiny_study(tmp_path, "mine")).to_dict()
    config["model"] = "evilmod_ss:make"
    _plant_study(storage, "mine", config)
    with pytest.raises(SystemExit, match="the planted function ran"):
        main(["export", "--storage", storage, "--runs-dir", "runs", "--out", "m.pt", "--trust-study"])
    assert evil_module.read_text() == "called"
