"""Several workers on one study: exact trial counts, local worker processes, resume hints.

- :func:`optimize_until` runs trials until the study holds exactly ``max_complete`` COMPLETE
  trials, however many workers (processes, machines) share it. Optuna's
  ``MaxTrialsCallback`` only stops a worker after the fact, so concurrent workers overshoot.
- :func:`run_workers` starts N local worker processes on one study (CPU threads split between
  them, journal file storage unless a storage is given) and returns the result, with the test
  accuracy of the best trial measured once, in the parent.
- :func:`resume_hint` is the line printed after Ctrl-C.

Counting rule: a worker starts a trial only while ``COMPLETE + RUNNING < max_complete``
(otherwise it waits, polling with backoff, failing stale trials of dead workers as it goes);
after ``ask`` it re-checks, and a trial that would exceed the count (another worker asked at the
same moment: the lower trial number wins) is PRUNED with user attribute ``surplus`` and, when it
came from the queue, queued again. A trial that ends PRUNED or FAIL frees its place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from sparsesearch.errors import SparsesearchError

__all__ = [
    "SURPLUS_ATTR",
    "cached_tensors",
    "count_trials",
    "create_study_once",
    "optimize_until",
    "resume_hint",
    "run_study",
    "run_workers",
    "setup_owner",
    "split_trials",
]

log = logging.getLogger("sparsesearch")

SURPLUS_ATTR = "surplus"
Callback = Callable[[optuna.Study, FrozenTrial], None]

# user/system attributes of a queued trial that are not carried to its re-queued copy
_RUN_SYSTEM_ATTRS = ("sparsesearch:heartbeat", "sparsesearch:worker")


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """``(complete, running)`` trial counts of ``study`` (fresh from the storage)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
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
    from sparsesearch.storage import _RUN_ATTRS

    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=frozen.params,
            distributions=frozen.distributions,
            user_attrs={k: v for k, v in frozen.user_attrs.items() if k not in _RUN_ATTRS},
            system_attrs={k: v for k, v in frozen.system_attrs.items() if k not in _RUN_SYSTEM_ATTRS},
        )
    )


def _guard(objective: Callable[[optuna.Trial], Any], max_complete: int) -> Callable[[optuna.Trial], Any]:
    def guarded(trial: optuna.Trial) -> Any:
        study = trial.study
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
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
        try:
            study.optimize(guarded, n_trials=1, catch=catch, callbacks=list(callbacks),
                           show_progress_bar=show_progress_bar, gc_after_trial=False)
        except Exception as exc:
            if not _finished_meanwhile(exc):
                raise
            _warn_failed_meanwhile(exc)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the running trial is marked FAIL with its reason."""


def terminate_like_interrupt() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread (like Ctrl-C); returns the
    previous handler (None where signals cannot be set, e.g. not the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise Terminated

    return signal.signal(signal.SIGTERM, handler)


def _interrupt_reason(exc: BaseException) -> str:
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
    return (f"{what} while running: marked FAIL; its parameters are not queued again "
            "(run the study again to go on)")


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
    from sparsesearch.storage import describe_storage_error, is_storage_error

    objective = _recording_interrupts(objective)
    try:
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
    from optuna.study import StudyDirection

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
    from pathlib import Path

    import torch
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - a damaged cache is recomputed
                log.warning("ignoring the unreadable cache %s: %s", path, exc)
        value = compute()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in value.items()}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return value


# ---------------------------------------------------------------------------------------------
# local worker processes


def split_trials(n_trials: int | None, workers: int) -> list[int | None]:
    """``n_trials`` shared out over ``workers`` (the first ones get one more); None stays None."""
    if n_trials is None:
        return [None] * workers
    base, extra = divmod(n_trials, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _raise_interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise Terminated


def _worker_main(index: int, kwargs: dict[str, Any], threads: int, level: int, errors: Any,
                 rng_state: Any = None) -> None:
    """Entry point of a worker process (spawned): one ``search`` on the shared study."""
    try:
        os.setpgrp()  # Ctrl-C reaches the parent only, which passes it on once
    except OSError:  # pragma: no cover
        pass
    signal.signal(signal.SIGTERM, _raise_interrupt)  # terminate: fail the trial cleanly too
    logger = logging.getLogger("sparsesearch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_WorkerFormatter(index))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the parent reports progress
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        import torch

        torch.set_num_threads(threads)
        if rng_state is not None:  # the parent's: same initial weights, same dense cache key
            torch.set_rng_state(rng_state)
        from sparsesearch.search import search

        search(**kwargs)
    except KeyboardInterrupt:
        sys.exit(130)
    except SparsesearchError as exc:
        errors.put((index, str(exc)))
        sys.exit(2)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        if isinstance(exc, SystemExit):
            raise
        errors.put((index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"))
        sys.exit(1)


class _WorkerFormatter(logging.Formatter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def format(self, record: logging.LogRecord) -> str:
        level = "warning: " if record.levelno >= logging.WARNING else ""
        return f"sparsesearch[worker {self.index}]: {level}{record.getMessage()}"


def _open_for_watching(spec: str, study_name: str, runs_dir: Any) -> optuna.Study | None:
    from sparsesearch.storage import make_storage

    try:
        storage = make_storage(spec, study_name=study_name, runs_dir=runs_dir,
                               heartbeat_interval=None, connect_retries=0)
        return optuna.load_study(study_name=study_name, storage=storage)
    except (KeyError, SparsesearchError):
        return None  # not created yet (the workers are still training the dense model)


def run_workers(
    n: int,
    *,
    search_kwargs: Mapping[str, Any],
    threads_per_worker: int | None = None,
    callbacks: Sequence[Callback] = (),
    join_timeout: float = 120.0,
) -> Any:
    """Run ``search(**search_kwargs)`` in ``n`` local worker processes sharing one study, then
    return its :class:`~sparsesearch.search.SearchResult` (loaded in this process; the test
    accuracy of the best trial is measured here, once).

    ``search_kwargs["storage"]``: a URL or ``journal:PATH`` (each worker opens it), default
    the run folder's ``journal.log``. ``n_trials`` is shared out between the workers;
    ``max_complete`` and ``timeout`` apply to each (``max_complete`` is exact for the study).
    Each worker uses ``threads_per_worker`` torch threads (default: the CPUs available
    divided by ``n``). ``callbacks`` run here, once per trial finished by any worker (polled).
    The dense model and strategy scores are computed by the first worker and shared through
    files (with file locks) in the run folder.

    Ctrl-C: passed on to the workers, whose running trials are marked FAIL; the workers are
    joined and ``KeyboardInterrupt`` is raised. A worker that fails makes this raise
    :class:`SparsesearchError` with its message once all workers ended; a worker killed by a
    signal only logs a warning (the others re-run its trial, see heartbeats).
    """
    from sparsesearch.storage import BaseStorage, resolve_storage_spec

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SparsesearchError(f"the number of workers must be an int >= 1, got {n!r}")
    kw = dict(search_kwargs)
    study_name = kw.get("study_name", "sparsesearch")
    runs_dir = kw.get("runs_dir", "runs")
    parent_callbacks = list(callbacks) + list(kw.pop("callbacks", ()) or ())
    spec = kw.get("storage")
    if isinstance(spec, BaseStorage):
        raise SparsesearchError("run_workers needs the storage as a URL or journal:PATH (each worker "
                                "process opens its own connection), not a storage object")
    spec = resolve_storage_spec(spec, study_name=study_name, runs_dir=runs_dir, workers=n)
    if n > 1 and spec.startswith("sqlite"):
        log.warning("%d workers share a SQLite file: it serialises writers and may report "
                    "'database is locked'; prefer journal:PATH or a server database", n)
    kw["storage"] = spec
    for key in ("model", "data"):
        if not isinstance(kw.get(key), str):
            raise SparsesearchError(f"run_workers needs {key} as a name (a string) that each worker "
                                    f"process can load, got {type(kw.get(key)).__name__}")
    threads = threads_per_worker or max(1, _cpu_count() // n)
    evaluate_test = kw.pop("evaluate_test", True)
    per_worker = split_trials(kw.get("n_trials"), n)
    import torch

    rng_state = torch.get_rng_state()  # a model built by name gets the same initial weights
    # in every worker and in the final load here (so the dense cache is shared)
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    level = log.getEffectiveLevel()
    procs = []
    saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    log.info("starting %d workers (%d torch thread%s each) on study %r in %s", n, threads,
             "" if threads == 1 else "s", study_name, _label(spec))
    watched = _open_for_watching(spec, study_name, runs_dir) if parent_callbacks else None
    seen = {t.number for t in watched.get_trials(deepcopy=False)
            if t.state.is_finished()} if watched is not None else set()
    try:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        for i in range(n):
            wkw = dict(kw, n_trials=per_worker[i], evaluate_test=False, show_progress=False,
                       callbacks=())
            if per_worker[i] == 0 and wkw.get("max_complete") is None:
                continue
            p = ctx.Process(target=_worker_main, args=(i, wkw, threads, level, errors, rng_state),
                            name=f"sparsesearch-worker-{i}", daemon=True)
            p.start()
            procs.append(p)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        wait = 0.2
        while any(p.is_alive() for p in procs):
            procs_alive = [p for p in procs if p.is_alive()]
            procs_alive[0].join(wait)
            wait = min(wait * 1.5, 1.0)
            if parent_callbacks:
                if watched is None:
                    watched = _open_for_watching(spec, study_name, runs_dir)
                if watched is not None:
                    _report_new(watched, seen, parent_callbacks)
        if parent_callbacks:
            watched = watched or _open_for_watching(spec, study_name, runs_dir)
            if watched is not None:
                _report_new(watched, seen, parent_callbacks)
    except KeyboardInterrupt:
        _stop(procs, join_timeout)
        raise
    problems = []
    while not errors.empty():
        index, message = errors.get()
        problems.append(f"worker {index}: {message}")
    interrupted = [p for p in procs if p.exitcode == 130]
    killed = [p for p in procs if p.exitcode is not None and p.exitcode < 0]
    for p in killed:
        log.warning("%s was killed by signal %d; its running trial is marked FAIL and re-run once "
                    "its heartbeat is stale", p.name, -p.exitcode)
    if problems:
        raise SparsesearchError("; ".join(problems))
    if interrupted:
        raise KeyboardInterrupt
    from sparsesearch.search import search

    final = dict(kw, n_trials=0, timeout=None, max_complete=None, evaluate_test=evaluate_test,
                 show_progress=False, callbacks=())
    torch.set_rng_state(rng_state)
    return search(**final)


def _label(spec: str) -> str:
    from sparsesearch.storage import storage_label

    return storage_label(spec)


def _report_new(study: optuna.Study, seen: set[int], callbacks: Sequence[Callback]) -> None:
    try:
        trials = study.get_trials(deepcopy=True)
    except Exception as exc:  # noqa: BLE001 - watching is best effort; the workers report errors
        log.debug("cannot poll the study: %s", exc)
        return
    for t in trials:
        if t.state.is_finished() and t.number not in seen:
            seen.add(t.number)
            for cb in callbacks:
                cb(study, t)


def _stop(procs: Sequence[Any], timeout: float) -> None:
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGINT)
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            break
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)


def resume_hint(
    study_name: str,
    storage: Any,
    *,
    study_file: str | os.PathLike | None = None,
    workers: int = 1,
) -> str:
    """The line printed after Ctrl-C: how to resume ``study_name`` in ``storage`` (a URL,
    ``journal:PATH``, a storage object or None for the run folder's default). No I/O."""
    from sparsesearch.storage import storage_label

    target = str(study_file) if study_file is not None else "STUDY.toml"
    cmd = ["sparsesearch", "run", _quote(target), "--study-name", _quote(study_name)]
    where = "the run folder's default storage"
    if storage is not None:
        label = storage_label(storage)
        where = label
        if label.startswith(("journal:", "sqlite:", "postgresql", "mysql")) or "://" in label:
            cmd += ["--storage", _quote(label)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    note = " (put the password back in place of ***)" if "***" in " ".join(cmd) else ""
    return (f"interrupted: study {study_name!r} keeps its finished trials in {where} (the "
            f"interrupted trial is marked FAIL); resume with: {' '.join(cmd)}{note}")


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
