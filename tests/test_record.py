"""The record of a study: several attributes written in one storage call on sparsesearch's
storages (one transaction, one journal append), one call per key elsewhere."""

from __future__ import annotations

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError

from sparsesearch import record
from sparsesearch.storage import HeartbeatJournalStorage, _RDBStorage, make_storage

ATTRS = {"phase": "screen", "recipe": {"strategy": "magnitude", "sparsity": {"fc1": 0.9}},
         "params": 12, "val_loss": None}


def _storage(kind: str, tmp_path):
    spec = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/j.log"
    return make_storage(spec, study_name="s", heartbeat_interval=None)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trial_attributes_are_one_storage_call(kind, tmp_path, count_calls):
    storage = _storage(kind, tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    cls = _RDBStorage if kind == "sqlite" else HeartbeatJournalStorage
    calls = count_calls(cls, "set_trial_user_attr", "set_trial_user_attrs")
    record.trial_attrs(trial, ATTRS)  # outside sparsesearch's runner nothing is held
    assert calls == {"set_trial_user_attr": 0, "set_trial_user_attrs": 1}
    assert trial.user_attrs == ATTRS  # the live trial sees them, as after set_user_attr
    record.trial_attrs(trial, {"params": 10})  # an existing key is replaced
    study.tell(trial, 0.5)
    again = optuna.load_study(study_name="s", storage=_storage(kind, tmp_path))
    assert again.trials[0].user_attrs == {**ATTRS, "params": 10}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_study_attributes_are_one_storage_call(kind, tmp_path, count_calls):
    storage = _storage(kind, tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    study.set_user_attr("seed", 1)
    cls = _RDBStorage if kind == "sqlite" else HeartbeatJournalStorage
    calls = count_calls(cls, "set_study_user_attr", "set_study_user_attrs")
    record.study_attrs(study, {"seed": 2, "budget_params": 100, "settings": {"a": [1, 2]}})
    assert calls == {"set_study_user_attr": 0, "set_study_user_attrs": 1}
    again = optuna.load_study(study_name="s", storage=_storage(kind, tmp_path))
    assert again.user_attrs == {"seed": 2, "budget_params": 100, "settings": {"a": [1, 2]}}


def test_other_storages_get_one_call_per_key(count_calls):
    study = optuna.create_study()  # in memory
    trial = study.ask()
    calls = count_calls(optuna.storages.InMemoryStorage, "set_trial_user_attr", "set_study_user_attr")
    record.trial_attrs(trial, ATTRS)
    record.study_attrs(study, {"a": 1, "b": 2})
    assert calls == {"set_trial_user_attr": len(ATTRS), "set_study_user_attr": 2}
    assert study.trials[0].user_attrs == ATTRS and study.user_attrs == {"a": 1, "b": 2}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_finished_trial_refuses_the_batch_and_the_storage_stays_usable(kind, tmp_path):
    # e.g. failed as stale by another worker meanwhile: Optuna's error, as for set_user_attr;
    # the journal must not raise it again, for the batch's other records, at the next read
    study = optuna.create_study(storage=_storage(kind, tmp_path), study_name="s")
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(UpdateFinishedTrialError):
        record.trial_attrs(trial, ATTRS)
    assert study.trials[0].user_attrs == {}
    nxt = study.ask()
    record.trial_attrs(nxt, {"phase": "screen"})
    study.tell(nxt, 0.7)
    assert [t.user_attrs for t in study.trials] == [{}, {"phase": "screen"}]
