"""Ctrl-C and SIGTERM wait for a storage write to finish (sparsesearch/interrupts.py).

CI once caught the bug this module fixes: the test that presses Ctrl-C after the first trial
got SQLAlchemy's ``AssertionError`` (exit 1) instead of exit 130, because ``KeyboardInterrupt``
had landed inside the commit of Optuna's stale-trial check. Here the signal is raised exactly
there, from SQLAlchemy's own commit event, so the race is not left to chance.
"""

from __future__ import annotations

import signal

import optuna
import pytest
from sqlalchemy import event

from sparsesearch.interrupts import Terminated, handling_interrupts, shielded, storage_call
from sparsesearch.storage import make_storage


def test_a_signal_inside_a_storage_call_is_raised_when_it_ends():
    done = []
    with handling_interrupts():
        with pytest.raises(KeyboardInterrupt):
            with storage_call():
                signal.raise_signal(signal.SIGINT)
                done.append("after the signal")  # the section runs to its end
                with storage_call():  # nested: still held back
                    done.append("nested")
                done.append("end")
    assert done == ["after the signal", "nested", "end"]


def test_outside_a_storage_call_it_is_raised_at_once():
    with handling_interrupts():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            pytest.fail("not interrupted")  # pragma: no cover


def test_sigterm_is_terminated_and_the_handlers_come_back():
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with handling_interrupts():
        with pytest.raises(Terminated):
            with storage_call():
                signal.raise_signal(signal.SIGTERM)
        with handling_interrupts(sigterm=False):  # nested: changes nothing
            with pytest.raises(Terminated):
                signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before_int
    assert signal.getsignal(signal.SIGTERM) is before_term


def test_a_handler_of_the_users_own_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append("mine"))
    try:
        with handling_interrupts(sigterm=False):
            with storage_call():
                signal.raise_signal(signal.SIGINT)
        assert seen == ["mine"]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_error_of_the_section_is_kept_as_the_interrupts_context():
    with handling_interrupts():
        with pytest.raises(KeyboardInterrupt) as caught:
            with storage_call():
                signal.raise_signal(signal.SIGINT)
                raise OSError("the write failed")
    assert isinstance(caught.value.__context__, OSError)


def test_shielded_keeps_the_functions_name_and_value():
    @shielded
    def write(x):
        """Doc."""
        return x + 1

    assert write(1) == 2 and write.__name__ == "write" and write.__doc__ == "Doc."


def test_ctrl_c_during_a_sqlite_commit_leaves_the_storage_usable(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path}/s.db", study_name="s", heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="s")
    engine = storage._backend.engine if hasattr(storage, "_backend") else storage.engine
    fired = []

    def press_ctrl_c(conn):
        if not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)  # inside SQLAlchemy's commit

    event.listen(engine, "commit", press_ctrl_c)
    with handling_interrupts():
        with pytest.raises(KeyboardInterrupt):
            study.set_user_attr("k", 1)
    assert fired
    event.remove(engine, "commit", press_ctrl_c)
    assert study.user_attrs == {"k": 1}  # the write completed before the interrupt
    study.set_user_attr("k2", 2)  # and the session is not left torn down
    assert study.user_attrs == {"k": 1, "k2": 2}


def test_ctrl_c_during_a_journal_append_keeps_the_journal_whole(tmp_path):
    path = tmp_path / "j.log"
    storage = make_storage(f"journal:{path}", study_name="s", heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="s")
    fired = []
    backend = storage._backend
    append = backend.append_logs

    def interrupted_append(logs):
        if not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)  # just before the line is written
        return append(logs)

    backend.append_logs = interrupted_append  # this backend object only
    with handling_interrupts():
        with pytest.raises(KeyboardInterrupt):
            study.set_user_attr("k", 1)
    assert fired
    reloaded = optuna.load_study(study_name="s", storage=make_storage(f"journal:{path}", study_name="s"))
    assert reloaded.user_attrs == {"k": 1}
