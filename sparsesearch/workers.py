"""Several local workers on one study: worker processes, resume hints (the runner's exact
trial counts, :func:`optimize_until` and :func:`run_study`, live in :mod:`sparsesearch.runner`
and are re-exported here).

- :func:`run_workers` starts N local worker processes on one study (CPU threads split between
  them, journal file storage unless a storage is given) and returns the result, built in the
  parent (:func:`sparsesearch.search.study_result`: the best trial replayed and tested once).
- :func:`resume_hint` is the line printed after Ctrl-C.

How several workers keep the trial count exact: :mod:`sparsesearch.runner` (its "counting rule").
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shlex
import signal
import sys
import time
import traceback
import warnings
from typing import Any, Mapping, Sequence

import optuna
import torch

from sparsesearch.errors import SparsesearchError
from sparsesearch.runner import (  # noqa: F401 - the runner's names, re-exported
    SURPLUS_ATTR,
    Callback,
    Terminated,
    cached_tensors,
    count_trials,
    create_study_once,
    optimize_until,
    run_study,
    setup_owner,
)
from sparsesearch._optuna import quiet_optuna
from sparsesearch.interrupts import handling_interrupts
from sparsesearch.search import prepare_dense_model, search, study_result
from sparsesearch.storage import BaseStorage, make_storage, resolve_storage_spec, storage_label

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


def _worker_main(index: int, kwargs: dict[str, Any], threads: int, level: int, errors: Any,
                 rng_state: Any = None) -> None:
    """Entry point of a worker process (spawned): one ``search`` on the shared study."""
    try:
        os.setpgrp()  # Ctrl-C reaches the parent only, which passes it on once
    except OSError:  # pragma: no cover
        pass
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
        torch.set_num_threads(threads)
        if rng_state is not None:  # the parent's: same initial weights, same dense cache key
            torch.set_rng_state(rng_state)
        with handling_interrupts():  # terminate: fail the trial cleanly too, like Ctrl-C
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
    torch.set_rng_state(rng_state)
    if not procs:  # nothing to share out (n_trials=0): the one search, here
        return search(**dict(kw, evaluate_test=evaluate_test, show_progress=False, callbacks=()))
    return _result(kw, spec, evaluate_test)


def _result(kw: Mapping[str, Any], spec: str, evaluate_test: bool) -> Any:
    """The workers' study as :func:`search` returns it, built here without searching again:
    the dense model from the run folder's cache (trained by the first worker), the chosen
    trial replayed from its recipe and tested once."""
    study_name = kw.get("study_name", "sparsesearch")
    runs_dir = kw.get("runs_dir", "runs")
    with quiet_optuna(level=logging.ERROR):
        storage = make_storage(spec, study_name=study_name, runs_dir=runs_dir, heartbeat_interval=None)
        try:  # before the dense model: every worker may have ended (killed) before creating it
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise SparsesearchError(
                f"study {study_name!r} was not created: the workers ended before it") from None
        dense_model, splits = prepare_dense_model(
            kw["model"], kw["data"], seed=kw.get("seed", 0), dense=kw.get("dense"),
            trained=kw.get("trained"), model_kwargs=kw.get("model_kwargs"),
            data_options=kw.get("data_options"), checkpoint=kw.get("checkpoint"),
            device=kw.get("device", "cpu"), runs_dir=runs_dir, study_name=study_name,
        )
        return study_result(study, dense_model, splits, device=kw.get("device", "cpu"),
                            evaluate_test=evaluate_test)


def _label(spec: str) -> str:
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
    runs_dir: str | os.PathLike | None = None,
    options: Sequence[str] = (),
) -> str:
    """The line printed after Ctrl-C: how to resume ``study_name`` in ``storage`` (a URL,
    ``journal:PATH``, a storage object or None for the run folder's default). No I/O.

    ``runs_dir`` (kept unless it is the default ``runs``: the default storage and the dense
    cache live there) and ``options`` (more ``run`` options that shape the study, such as
    ``--seed N``, ``--device DEV``) are repeated in the command."""
    target = str(study_file) if study_file is not None else "STUDY.toml"
    cmd = ["sparsesearch", "run", _quote(target), "--study-name", _quote(study_name)]
    if runs_dir is not None and os.path.normpath(str(runs_dir)) != "runs":
        cmd += ["--runs-dir", _quote(str(runs_dir))]
    where = "the run folder's default storage"
    if storage is not None:
        label = storage_label(storage)
        where = label
        if label.startswith(("journal:", "sqlite:", "postgresql", "mysql")) or "://" in label:
            cmd += ["--storage", _quote(label)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cmd += [_quote(str(o)) for o in options]
    note = " (put the password back in place of ***)" if "***" in " ".join(cmd) else ""
    return (f"interrupted: study {study_name!r} keeps its finished trials in {where} (the "
            f"interrupted trial is marked FAIL); resume with: {' '.join(cmd)}{note}")


def _quote(s: str) -> str:
    return shlex.quote(s)
