"""Running a study's trials: exact trial counts with several workers, interruptions recorded,
storage failures as one line, and the set-up done once per study (the study layer, below
:mod:`sparsesearch.search`; :mod:`sparsesearch.workers` starts local worker processes on top).

- :func:`optimize_until` runs trials until the study holds exactly ``max_complete`` COMPLETE
  trials, however many workers (processes, machines) share it. Optuna's
  ``MaxTrialsCallback`` only stops a worker after the fact, so concurrent workers overshoot.
- :func:`run_study` is ``study.optimize`` (or ``optimize_until``) with interrupted trials
  marked and storage failures turned into one :class:`SparsesearchError`.
- :func:`create_study_once`, :func:`setup_owner`, :func:`cached_tensors`: what one of several
  workers does once per study.

Counting rule: a worker starts a trial only while ``COMPLETE + RUNNING < max_complete``
(otherwise it waits, polling with backoff, failing stale trials of dead workers as it goes);
after ``ask`` it re-checks, and a trial that would exceed the count (another worker asked at the
same moment: the lower trial number wins) is PRUNED with user attribute ``surplus`` and, when it
came from the queue, queued again. A trial that ends PRUNED or FAIL frees its place.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sparsesearch import record
from sparsesearch.errors import SparsesearchError
from sparsesearch.interrupts import Terminated, handling_interrupts
from sparsesearch.models import locked_cache
from sparsesearch.storage import (
    _RUN_ATTRS,
    RETRY_OF_ATTR,
    describe_storage_error,
    input_system_attrs,
    is_storage_error,
)
from sparsesearch.write_behind import holding

__all__ = [
    "SURPLUS_ATTR",
    "Terminated",
    "cached_tensors",
    "count_trials",
    "create_study_once",
    "optimize_until",
    "run_study",
    "requeue_interrupted",
    "setup_owner",
    "was_interrupted",
]

log = logging.getLogger("sparsesearch")

SURPLUS_ATTR = record.SURPLUS
Callback = Callable[[optuna.Study, FrozenTrial], None]


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """``(complete, running)`` trial counts of ``study`` (fresh from the storage)."""
    trials = record.trials_now(study, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
    return complete, len(trials) - complete


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    """Queue a popped WAITING trial again (its fixed parameters and inputs), e.g. a seed."""
    frozen = study._storage.get_trial(trial._trial_id)
    fixed = frozen.system_attrs.get("fixed_params")
    if not fixed and not frozen.params:
        return  # sampled, not queued: nothing to give back
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=frozen.params,
            distributions=frozen.distributions,
            user_attrs={k: v for k, v in frozen.user_attrs.items() if k not in _RUN_ATTRS},
            system_attrs=input_system_attrs(frozen.system_attrs),
        )
    )


def _guard(objective: Callable[[optuna.Trial], Any], max_complete: int) -> Callable[[optuna.Trial], Any]:
    def guarded(trial: optuna.Trial) -> Any:
        study = trial.study
        trials = record.trials_now(study, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        ahead = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < trial.number)
        if complete + ahead >= max_complete:
            trial.set_user_attr(SURPLUS_ATTR, True)
            _requeue(study, trial)
            raise optuna.TrialPruned(
                f"surplus: {complete} complete and {ahead} running trials already make "
                f"max_complete={max_complete}"
            )
        return objective(trial)

    return guarded


def optimize_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    max_complete: int,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    callbacks: Sequence[Callback] = (),
    catch: tuple[type[Exception], ...] = (Exception,),
    show_progress_bar: bool = False,
    poll_interval: tuple[float, float] = (0.2, 5.0),
) -> int:
    """Run trials of ``study`` until it holds ``max_complete`` COMPLETE trials (exactly, with
    any number of concurrent workers), this call ran ``n_trials`` trials, or ``timeout``
    seconds passed. Returns the number of trials this call ran.

    While ``COMPLETE + RUNNING >= max_complete`` the worker waits (polling every
    ``poll_interval[0]`` seconds, backing off to ``poll_interval[1]``) and fails stale trials
    (heartbeats), whose retries it then runs. See the module docstring for the rule.
    """
    if max_complete < 1:
        raise SparsesearchError(f"max_complete must be >= 1, got {max_complete}")
    guarded = _guard(objective, max_complete)
    start = time.monotonic()
    ran = 0
    low, high = poll_interval
    wait = low
    while True:
        _fail_stale(study)
        complete, running = count_trials(study)
        if complete >= max_complete:
            break
        if n_trials is not None and ran >= n_trials:
            break
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if left is not None and left <= 0:
            break
        if complete + running >= max_complete:
            time.sleep(wait if left is None else min(wait, left))
            wait = min(wait * 1.5, high)
            continue
        wait = low
        _optimize(study, guarded, n_trials=1, timeout=None, callbacks=callbacks, catch=catch,
                  show_progress_bar=show_progress_bar)
        ran += 1
        if study._stop_flag:  # a callback called study.stop()
            break
    return ran


def _finished_meanwhile(exc: BaseException) -> bool:
    """Whether Optuna failed to finish a trial because another worker had finished it (failed
    it as stale): ``UpdateFinishedTrialError``, or ``tell``'s "Cannot tell a FAIL trial"."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, optuna.exceptions.UpdateFinishedTrialError):
            return True
        if isinstance(e, ValueError) and str(e).startswith("Cannot tell a "):
            return True
        e = e.__cause__ or e.__context__
    return False


def _warn_failed_meanwhile(exc: BaseException) -> None:
    # this worker's trial was failed as stale by another one (e.g. this process was suspended
    # longer than the grace period); its retry is queued: carry on
    while exc.__context__ is not None and str(exc).startswith("Should not reach"):
        exc = exc.__context__  # Optuna's assertion after a refused tell: show the cause
    log.warning("a trial of this worker was marked FAIL by another worker meanwhile (missed "
                "heartbeats; it is queued again): %s", exc)


def _optimize(study: optuna.Study, objective: Callable[[optuna.Trial], Any], *, n_trials: int | None,
              timeout: float | None, callbacks: Sequence[Callback], catch: tuple[type[Exception], ...],
              show_progress_bar: bool) -> None:
    """``study.optimize``, carrying on when a trial was failed as stale by another worker."""
    calls = [0]

    def counted(trial: optuna.Trial) -> Any:
        calls[0] += 1
        return objective(trial)

    start = time.monotonic()
    while True:
        left_trials = None if n_trials is None else n_trials - calls[0]
        left_time = None if timeout is None else timeout - (time.monotonic() - start)
        if (left_trials is not None and left_trials <= 0) or (left_time is not None and left_time <= 0):
            return
        try:
            study.optimize(counted, n_trials=left_trials, timeout=left_time, catch=catch,
                           callbacks=list(callbacks), show_progress_bar=show_progress_bar,
                           gc_after_trial=False)
            return
        except Exception as exc:
            if not _finished_meanwhile(exc):
                raise
            _warn_failed_meanwhile(exc)
            if study._stop_flag:
                return


_INTERRUPTED = ("interrupted (Ctrl-C)", "terminated (SIGTERM)")


def _interrupt_reason(exc: BaseException) -> str:
    what = _INTERRUPTED[1] if isinstance(exc, Terminated) else _INTERRUPTED[0]
    return (f"{what} while running: marked FAIL; a heuristic seed or finalist is queued again "
            "when the study is run again, other trials are not")


def was_interrupted(trial: FrozenTrial) -> bool:
    """Whether ``trial`` FAILed because Ctrl-C or SIGTERM stopped it (its stored reason)."""
    return (trial.state == TrialState.FAIL
            and str(trial.user_attrs.get(record.FAIL_REASON, "")).startswith(_INTERRUPTED))


def requeue_interrupted(study: optuna.Study, key: Callable[[FrozenTrial], Any],
                        inputs: Sequence[str]) -> list[FrozenTrial]:
    """Queue again, once, the trials that Ctrl-C or SIGTERM stopped among those ``key`` marks
    (not None), when no other trial of the same key is COMPLETE, PRUNED, RUNNING or WAITING:
    the same parameters and the user attributes ``inputs``, plus ``retry_of``. Returns the
    trials queued again. (Seeds and finalists are the study's chosen candidates: losing one
    to an interruption would change the result, unlike a sampled trial.)"""
    by_key: dict[Any, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        k = key(t)
        if k is not None:
            by_key.setdefault(k, []).append(t)
    again = []
    for same in by_key.values():  # a copy queued before has the same key: it is in ``same``
        if any(t.state != TrialState.FAIL for t in same):
            continue  # done, running, waiting, or pruned: nothing lost
        last = same[-1]
        if not was_interrupted(last):
            continue
        study.enqueue_trial(dict(last.params), user_attrs={
            **{k: last.user_attrs[k] for k in inputs if k in last.user_attrs}, RETRY_OF_ATTR: last.number,
        }, skip_if_exists=False)
        again.append(last)
    return again


def _recording_interrupts(objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
    """``objective`` that stores ``fail_reason`` on its trial when Ctrl-C or SIGTERM stops it
    (Optuna then marks the trial FAIL and stops)."""

    def recorded(trial: optuna.Trial) -> Any:
        try:
            return objective(trial)
        except KeyboardInterrupt as exc:
            try:
                trial.set_user_attr("fail_reason", _interrupt_reason(exc))
            except BaseException:  # noqa: BLE001 - a second Ctrl-C, a lost storage: just stop
                pass
            raise

    return recorded


def run_study(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    n_trials: int | None,
    timeout: float | None,
    max_complete: int | None = None,
    callbacks: Sequence[Callback] = (),
    catch: tuple[type[Exception], ...] = (Exception,),
    show_progress_bar: bool = False,
) -> None:
    """``study.optimize`` (or :func:`optimize_until` with ``max_complete``), with storage
    failures turned into one :class:`SparsesearchError` line (password masked)."""
    objective = _recording_interrupts(objective)
    try:
        # Ctrl-C never lands inside a storage write; the trials run here are told here, so
        # an RDB storage may hold their writes until then (write_behind)
        with handling_interrupts(sigterm=False), holding(study._storage):
            if max_complete is not None:
                optimize_until(study, objective, max_complete, n_trials=n_trials, timeout=timeout,
                               callbacks=callbacks, catch=catch, show_progress_bar=show_progress_bar)
            else:
                _optimize(study, objective, n_trials=n_trials, timeout=timeout, callbacks=callbacks,
                          catch=catch, show_progress_bar=show_progress_bar)
    except SparsesearchError:
        raise
    except Exception as exc:
        if is_storage_error(exc):
            raise SparsesearchError(describe_storage_error(exc, study._storage)) from None
        raise


# ---------------------------------------------------------------------------------------------
# set-up done once per study, caches shared between workers


def create_study_once(storage: Any, study_name: str, directions: Sequence[str]) -> bool:
    """Create the study ``study_name`` in ``storage`` unless it exists; True when this call
    created it (atomic in the storage: of several workers starting at once, one gets True)."""
    dirs = [StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in directions]
    try:
        storage.create_new_study(dirs, study_name)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def setup_owner(study: optuna.Study, created: bool, *, key: str = "budget_params",
                timeout: float = 10.0) -> tuple[bool, dict[str, Any]]:
    """``(owner, user_attrs)``: whether this worker writes the study's attributes and enqueues
    its seed trials. The worker that created the study does; a worker that loaded it does
    only when ``key`` does not appear within ``timeout`` seconds (a study created empty by
    someone else, e.g. ``optuna create-study``), so seeds are enqueued once."""
    attrs = study.user_attrs
    if created or key in attrs:
        return created, attrs
    deadline = time.monotonic() + timeout
    wait = 0.05
    while time.monotonic() < deadline:
        time.sleep(wait)
        wait = min(wait * 2, 1.0)
        attrs = study.user_attrs
        if key in attrs:
            return False, attrs
    return True, attrs


def cached_tensors(path: str | os.PathLike, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` cached in the file ``path``: the first worker computes and writes it
    (atomically, under a file lock next to it), the others wait and load it
    (``torch.load(weights_only=True)``). For dicts of tensors such as strategy scores."""
    def load(file: Path) -> dict[str, Any] | None:
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is recomputed
            log.warning("ignoring the unreadable cache %s: %s", file, exc)
            return None

    def save(value: dict[str, Any], tmp: Path) -> None:
        torch.save({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in value.items()}, tmp)

    return locked_cache(path, compute, save=save, load=load)
