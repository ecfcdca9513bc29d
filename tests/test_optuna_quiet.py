"""Optuna stays quiet inside sparsesearch unless asked: no INFO lines, no ExperimentalWarning."""

from __future__ import annotations

import logging
import warnings

import optuna
import pytest

import sparsesearch
from sparsesearch._optuna import VERBOSE_ENV, quiet_optuna


@pytest.fixture(autouse=True)
def default_verbosity(monkeypatch):
    """Optuna at its default verbosity (INFO), whatever ran before; restored afterwards."""
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    yield
    optuna.logging.set_verbosity(before)


def _create(tmp_path, name):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name=name)


def _experimental():
    warnings.warn("an experimental feature", optuna.exceptions.ExperimentalWarning, stacklevel=1)


def test_without_it_optuna_talks(tmp_path, capfd):
    """The check below can see Optuna's INFO lines and warnings at all."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _create(tmp_path, "loud")
        _experimental()
    assert "A new study created in RDB" in capfd.readouterr().err
    assert [w.category for w in seen] == [optuna.exceptions.ExperimentalWarning]


def test_quiet_optuna_silences_info_and_experimental_warnings(tmp_path, capfd):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_optuna():
            _create(tmp_path, "quiet")
            _experimental()
            optuna.logging.get_logger("optuna").warning("a real warning gets through")
        warnings.warn("other warnings are untouched", UserWarning, stacklevel=1)
    err = capfd.readouterr().err
    assert "A new study created" not in err
    assert "a real warning gets through" in err
    assert [w.category for w in seen] == [UserWarning]
    assert optuna.logging.get_verbosity() == optuna.logging.INFO  # restored


def test_asking_for_optuna_output(tmp_path, capfd, monkeypatch):
    optuna.logging.set_verbosity(optuna.logging.DEBUG)  # the user asked for everything
    with quiet_optuna():
        _create(tmp_path, "debug")
    assert "A new study created in RDB" in capfd.readouterr().err
    assert optuna.logging.get_verbosity() == optuna.logging.DEBUG

    optuna.logging.set_verbosity(optuna.logging.INFO)
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_optuna():
            _create(tmp_path, "env")
            _experimental()
    assert "A new study created in RDB" in capfd.readouterr().err
    assert [w.category for w in seen] == [optuna.exceptions.ExperimentalWarning]
    monkeypatch.delenv(VERBOSE_ENV)
    with quiet_optuna(False):
        _create(tmp_path, "off")
    assert "A new study created in RDB" in capfd.readouterr().err



def test_search_from_python_is_quiet(tmp_path, capfd, caplog):
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO, "optuna"):
        warnings.simplefilter("always")
        result = sparsesearch.search(
            "digits-mlp", "digits", budget=0.3, n_trials=1, runs_dir=tmp_path / "runs",
            heuristics=["uniform"], dense={"epochs": 1}, space={"epochs": 1, "heuristic_lrs": [0.1]},
        )
    assert result.best_trial is not None
    err = capfd.readouterr().err
    assert "A new study created" not in err and "Using an existing study" not in err, err
    assert not [r for r in caplog.records if r.name.startswith("optuna") and r.levelno < logging.WARNING]
    experimental = [w for w in seen if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert not experimental, [str(w.message) for w in experimental]
    assert optuna.logging.get_verbosity() == optuna.logging.INFO  # the user's setting is kept
