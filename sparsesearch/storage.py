"""Where a study lives: Optuna storages for one or many workers, with heartbeats and retries.

:func:`make_storage` turns what the user wrote (nothing, a journal file, a SQLAlchemy URL) into
an Optuna storage that is safe for the number of workers that will share it:

- nothing: ``sqlite:///RUNS/NAME/study.db`` for one worker; Optuna's journal file
  ``RUNS/NAME/journal.log`` for several local workers (SQLite with several writers is not
  safe). A later single-worker run of a study that only has a ``journal.log`` keeps using it.
- ``journal:PATH`` or a path ending in ``.log`` / ``.journal``: journal file storage.
- a SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``): RDB storage.

Both kinds get heartbeats: a worker records one every ``heartbeat_interval`` seconds while a
trial runs, and a RUNNING trial whose heartbeat is older than ``grace_period`` (its worker was
killed) is marked FAIL by whichever worker looks next and queued again (WAITING, same
parameters, user attribute ``retry_of`` = the original trial number; at most 3 retries).
Optuna implements this for RDB storage; :class:`HeartbeatJournalStorage` adds it to the journal.

A database that does not answer is retried with one warning line per attempt (password
masked), then reported as one :class:`SparsesearchError`; an operation interrupted by a lost
connection is rolled back by the database, so no trial is half written (a trial whose worker
lost the database stays RUNNING until a heartbeat check marks it FAIL and queues it again).

RDB storages come wrapped in :class:`~sparsesearch.write_behind.WriteBehindStorage`: the
writes of a trial this process runs are made in a few transactions (when its training starts,
at most every ``SPARSESEARCH_WRITE_BEHIND`` seconds, default 5, and with its final state)
instead of one per write.

Environment: ``SPARSESEARCH_HEARTBEAT_INTERVAL`` / ``SPARSESEARCH_HEARTBEAT_GRACE`` (seconds)
replace the defaults of ``heartbeat_interval`` / ``grace_period``;
``SPARSESEARCH_DB_RETRIES`` / ``SPARSESEARCH_DB_RETRY_WAIT`` those of ``connect_retries`` /
``retry_wait``; ``SPARSESEARCH_WRITE_BEHIND`` (seconds, 0 = every write at once) the longest
a running trial's writes wait for their transaction.
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import logging
import math
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import unquote

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

from sparsesearch import record
from sparsesearch.errors import SparsesearchError
from sparsesearch.interrupts import shielded
from sparsesearch.write_behind import DEFAULT_INTERVAL, WriteBehindStorage

__all__ = [
    "HEARTBEAT_ATTR",
    "RETRY_OF_ATTR",
    "WORKER_ATTR",
    "HeartbeatJournalStorage",
    "RetryStaleTrial",
    "describe_storage_error",
    "is_connection_error",
    "is_storage_error",
    "make_storage",
    "mask_url",
    "repair_journal",
    "run_folder",
    "check_study_name",
    "url_password",
    "resolve_storage_spec",
    "storage_label",
]

log = logging.getLogger("sparsesearch")

DEFAULT_HEARTBEAT_INTERVAL = 20
HEARTBEAT_ATTR = "sparsesearch:heartbeat"  # trial system attr of journal heartbeats (unix time)
WORKER_ATTR = "sparsesearch:worker"  # trial system attr: "host:pid" of the worker running it
_WORKER_ATTRS = (HEARTBEAT_ATTR, WORKER_ATTR)  # not carried over to a retry


def input_system_attrs(system_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's system attributes without what its run wrote (its worker and heartbeat, its
    constraints, the pruner's rungs): what a retry or a re-queued copy of it keeps."""
    return {k: v for k, v in system_attrs.items()
            if k not in _WORKER_ATTRS and not k.startswith(("constraints", "completed_rung_"))}
RETRY_OF_ATTR = "retry_of"  # user attr of a re-run: number of the original (stale) trial
MAX_RETRY = 3

# user attributes a trial writes while it runs: not carried over to its retry
# what a run writes on a trial: not carried to the retry of a failed trial (the retry keeps
# the trial's inputs: phase, finalist_of, lr_scale, heuristic)
_RUN_ATTRS = frozenset({
    record.STRATEGY, record.GRANULARITY, record.SPARSITY, record.PARAMS, record.MACS, record.RECIPE,
    record.EPOCHS, record.VAL_ACCURACY, record.VAL_LOSS, record.PRUNED_AT, record.STOP_REASON,
    record.FAIL_REASON, record.TRACEBACK, record.SURPLUS,
})
FAIL_REASON_ATTR = "fail_reason"

_DEFAULT: Any = object()  # "not given": the environment or the built-in default applies


# ---------------------------------------------------------------------------------------------
# naming


_PASSWORD_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|secret|token|sslpassword)=)[^&#]*")


def _split_userinfo(url: str) -> tuple[str, str, str | None, str] | None:
    """``(scheme, user, password or None, host-and-rest)`` of ``scheme://user[:password]@rest``,
    None when ``url`` has no user part. The user part ends at the LAST ``@`` before the query,
    so a password holding ``@`` (``p@ss``, as typed, not URL-encoded) is hidden whole."""
    if "://" not in url:
        return None
    scheme, rest = url.split("://", 1)
    end = len(rest)
    for c in "?#":
        i = rest.find(c)
        if i != -1:
            end = min(end, i)
    at = rest.rfind("@", 0, end)
    if at == -1:
        return None
    userinfo = rest[:at]
    user, colon, password = userinfo.partition(":")
    if "/" in user:  # a path holding '@' (sqlite:////tmp/a@b.db), not credentials
        return None
    return scheme, user, (password if colon else None), rest[at + 1:]


def mask_url(url: str | os.PathLike) -> str:
    """A storage URL safe to print or store: any password replaced by ``***``.

    ``scheme://user:password@host/...`` becomes ``scheme://user:***@host/...``, with the user
    part taken up to the last ``@`` (a password containing ``@`` is hidden whole), and
    ``password=`` (``passwd``, ``pwd``, ``sslpassword``, ``secret``, ``token``) query values are
    masked too. SQLAlchemy URLs or not; journal paths and ``sqlite:///FILE`` are unchanged.
    """
    s = os.fspath(url) if isinstance(url, os.PathLike) else str(url)
    if s.startswith("journal:") or "://" not in s:
        return s
    parts = _split_userinfo(s)
    if parts is not None and parts[2] is not None:
        scheme, user, _password, rest = parts
        s = f"{scheme}://{user}:***@{rest}"
    return _PASSWORD_QUERY.sub(r"\1***", s)


def url_password(url: str | os.PathLike | None) -> str | None:
    """The password written in a storage URL (None without one): what must never be printed
    or stored. Also in URL-decoded form via :func:`url_secrets`."""
    if url is None or not isinstance(url, (str, os.PathLike)):
        return None
    parts = _split_userinfo(os.fspath(url))
    return parts[2] if parts is not None and parts[2] else None


def url_secrets(url: str | os.PathLike | None) -> list[str]:
    """Every form of the secrets in ``url`` (the password as typed and URL-decoded, query
    passwords), to scrub them from any text."""
    if url is None or not isinstance(url, (str, os.PathLike)):
        return []
    s = os.fspath(url)
    found = []
    password = url_password(s)
    if password:
        found += [password, unquote(password)]
    for m in re.finditer(r"(?i)[?&](?:password|passwd|pwd|secret|token|sslpassword)=([^&#]*)", s):
        if m.group(1):
            found += [m.group(1), unquote(m.group(1))]
    return sorted({f for f in found if len(f) >= 1}, key=len, reverse=True)


def _mask(url: str) -> str:
    return mask_url(url)


def check_study_name(name: Any, *, what: str = "study name") -> str:
    """``name`` if it is safe as one folder name under the runs folder, else one-line
    :class:`SparsesearchError`. Every path built from a study name goes through this (names
    come from study files, the command line and, untrusted, from storages)."""
    if not isinstance(name, str) or not name:
        raise SparsesearchError(f"{what} must be a non-empty string, got {name!r}")
    bad = None
    if "\x00" in name:
        bad = "contains a NUL byte"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        bad = "contains a control character"
    elif "/" in name or "\\" in name:
        bad = "contains a path separator ('/' or '\\')"
    elif name in (".", ".."):
        bad = "is '.' or '..'"
    elif os.path.isabs(name) or (len(name) >= 2 and name[1] == ":"):
        bad = "is an absolute path"
    if bad:
        raise SparsesearchError(
            f"{what} {name!r} {bad}: it cannot name a folder under the runs folder; "
            "use a plain name (letters, digits, '-', '_', '.')"
        )
    return name


def run_folder(runs_dir: str | os.PathLike, study_name: str) -> Path:
    """``runs_dir/study_name``, after :func:`check_study_name` (never outside ``runs_dir``)."""
    return Path(runs_dir) / check_study_name(study_name)


def resolve_storage_spec(
    spec: str | os.PathLike | None, *, study_name: str, runs_dir: str | os.PathLike = "runs",
    workers: int = 1,
) -> str:
    """The storage ``spec`` names, as a string: a SQLAlchemy URL or ``journal:PATH``.

    ``None`` is the default of the run folder ``runs_dir/study_name``: ``journal:.../journal.log``
    when ``workers > 1`` or when only a journal exists there, else ``sqlite:///.../study.db``.
    ``postgres://`` is accepted for ``postgresql://``.
    """
    if spec is None:
        run_dir = run_folder(runs_dir, study_name)
        journal, db = run_dir / "journal.log", run_dir / "study.db"
        if workers > 1 or (journal.is_file() and not db.is_file()):
            return f"journal:{journal}"
        return f"sqlite:///{db}"
    s = os.fspath(spec).strip()
    if not s:
        raise SparsesearchError("the storage is empty: give a URL (sqlite:///..., postgresql://...) "
                                "or journal:PATH")
    if s.startswith("journal:"):
        if not s[len("journal:"):]:
            raise SparsesearchError("journal: needs a file path, e.g. journal:runs/study/journal.log")
        return s
    if "://" not in s:
        if s.endswith((".log", ".journal")):
            return f"journal:{s}"
        raise SparsesearchError(
            f"storage {s!r} is neither a URL (sqlite:///FILE, postgresql://USER@HOST/DB, "
            "mysql://...) nor a journal file (journal:PATH, or a path ending in .log)"
        )
    parts = _split_userinfo(s)
    if parts is not None and ("@" in parts[1] or "@" in (parts[2] or "")):
        # SQLAlchemy would take what follows the first '@' as the host (and a driver error
        # would then print the end of the password)
        raise SparsesearchError(
            f"the user or password of storage {mask_url(s)} contains '@': write it URL-encoded "
            "as %40 (e.g. postgresql://user:p%40ss@host/db)"
        )
    if s.startswith("postgres://"):
        s = "postgresql://" + s[len("postgres://"):]
    if s.startswith("postgresql://"):
        s = "postgresql+" + _postgres_driver() + "://" + s[len("postgresql://"):]
    if s.split("://", 1)[0].startswith("redis"):
        raise SparsesearchError("redis storage is not supported; use postgresql://... or journal:PATH")
    return s


def _postgres_driver() -> str:
    """The installed PostgreSQL driver for a bare ``postgresql://`` URL: SQLAlchemy 2.1's
    default is psycopg 3, while ``sparsesearch[postgres]`` installs psycopg2."""
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return driver
    return "psycopg2"  # the error then names the extra to install


def storage_label(storage: str | BaseStorage | None) -> str:
    """A storage as it may be printed (a URL with its password masked)."""
    if storage is None:
        return "(default storage)"
    if isinstance(storage, str):
        return _mask(storage)
    inner = getattr(storage, "_backend", storage)
    if isinstance(inner, RDBStorage):
        return _mask(inner.url)
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    if path is not None:
        return f"journal:{path}"
    return type(storage).__name__


def _env_number(name: str, default: Any, cast: Callable[[str], Any], *, off: Any = None) -> Any:
    """``cast($name)``; ``default`` when unset; ``off`` for ``none``/``off``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if value.lower() in ("none", "off"):
        return off
    try:
        return cast(value)
    except ValueError:
        raise SparsesearchError(f"{name}={value!r} is not a number") from None


# ---------------------------------------------------------------------------------------------
# retrying stale trials


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (same system
    attributes ``failed_trial`` / ``retry_history``, same ``max_retry`` rule), plus: the retry
    gets the user attribute ``retry_of`` (the original trial's number), keeps the trial's
    inputs (``heuristic`` and the like) but not what the dead run wrote, drops the journal
    heartbeat, and one warning line is logged."""

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry, inherit_intermediate_values=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        system_attrs: dict[str, Any] = {
            "failed_trial": trial.number,
            "retry_history": [],
            **input_system_attrs(trial.system_attrs),
        }
        system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
        if self._max_retry is not None and self._max_retry < len(system_attrs["retry_history"]):
            log.warning("trial %d stopped sending heartbeats (its worker died?): marked FAIL; "
                        "not queued again (already retried %d times)", trial.number, self._max_retry)
            return
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _RUN_ATTRS}
        user_attrs[RETRY_OF_ATTR] = system_attrs["failed_trial"]
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
            )
        )
        log.warning("trial %d stopped sending heartbeats (its worker died?): marked FAIL and "
                    "queued again with the same parameters", trial.number)


# ---------------------------------------------------------------------------------------------
# journal storage with heartbeats


def _shield_writes(cls: type) -> type:
    """``cls`` whose storage methods are critical sections (:func:`interrupts.storage_call`):
    Ctrl-C or SIGTERM during a commit or a journal append is raised once the call is done,
    so no transaction is left half torn down and no journal line is cut."""
    names = {n for n in dir(BaseStorage) if not n.startswith("_")}
    names |= {"_get_stale_trial_ids", "record_heartbeat", "set_trial_user_attrs", "set_study_user_attrs",
              # what Optuna's cache wrapper calls instead of the public names
              "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
              "write_trial"}
    for name in sorted(names):
        if callable(getattr(cls, name, None)) and not isinstance(
                inspect.getattr_static(cls, name), (staticmethod, classmethod)):
            setattr(cls, name, shielded(getattr(cls, name)))
    return cls


class _NotesWorker:
    """Heartbeats also record, once per trial, which worker runs it (``WORKER_ATTR``); a trial
    found stale gets its ``fail_reason`` before it is marked FAIL."""

    def _note_stale(self, trial_id: int, why: str, grace: float, worker: Any = None) -> None:
        by = f" (worker {worker})" if worker else ""
        reason = (f"stale: {why}, over the grace period of {grace:g} s: its worker{by} died, was "
                  "killed or lost the storage; marked FAIL by another worker (and queued again "
                  "unless retried too often)")
        try:
            self.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        except UpdateFinishedTrialError:
            pass  # failed meanwhile by another worker, which wrote the reason
        except Exception as exc:  # noqa: BLE001 - the reason is a courtesy; failing it matters
            log.debug("could not record why trial %s is stale: %s", trial_id, exc)

    def _note_worker(self, trial_id: int) -> None:
        noted = self.__dict__.setdefault("_sparsesearch_noted", set())
        if trial_id in noted:
            return
        noted.add(trial_id)
        self.set_trial_system_attr(trial_id, WORKER_ATTR, _worker())

    def worker_attrs(self, trial_id: int) -> dict[str, Any]:
        """The worker attribute of a trial this process takes on, for a wrapper that writes it
        with the trial's own writes (:class:`~sparsesearch.write_behind.WriteBehindStorage`);
        the heartbeat then does not write it again."""
        self.__dict__.setdefault("_sparsesearch_noted", set()).add(trial_id)
        return {WORKER_ATTR: _worker()}


def _worker() -> str:
    """This worker, as ``WORKER_ATTR`` names it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@_shield_writes
class HeartbeatJournalStorage(_NotesWorker, JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat protocol of its RDB storage.

    While a trial runs, Optuna's heartbeat thread calls :meth:`record_heartbeat`, which writes
    the time as the trial system attribute ``sparsesearch:heartbeat`` (and once the worker's
    ``host:pid`` as ``sparsesearch:worker``). Before each trial,
    Optuna's ``fail_stale_trials`` asks :meth:`_get_stale_trial_ids` for RUNNING trials whose
    last heartbeat (or start, before the first one) is older than ``grace_period`` seconds
    (default twice the interval), marks them FAIL and hands them to
    ``heartbeat_stale_trial_callback``. Times are this machine's clock (wall time): workers on
    several machines sharing a journal file need synchronised clocks.
    """

    def __init__(
        self,
        log_storage: Any,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise SparsesearchError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval}")
        if grace_period is not None and grace_period <= 0:
            raise SparsesearchError(f"grace_period must be > 0 seconds, got {grace_period}")
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        super().__init__(log_storage)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._note_worker(trial_id)
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            pass  # finished (or failed as stale by another worker) meanwhile
        except Exception as exc:  # noqa: BLE001 - a missed beat is harmless; the next may work
            log.warning("could not record the heartbeat of a trial: %s: %s", type(exc).__name__,
                        " ".join(str(exc).split())[:200])

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(HEARTBEAT_ATTR)
            why = "its last heartbeat is {age:.0f} s old"
            if last is None and trial.datetime_start is not None:
                last = trial.datetime_start.timestamp()  # naive local time, as journal stores it
                why = "it has been RUNNING {age:.0f} s without a heartbeat"
            if last is not None and now - float(last) > grace:
                self._note_stale(trial._trial_id, why.format(age=now - float(last)), grace,
                                 trial.system_attrs.get(WORKER_ATTR))
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of one trial in one append to the journal (one lock, one
        write and fsync): one record per key, as Optuna writes and replays them."""
        self._append(JournalOperation.SET_TRIAL_USER_ATTR,
                     [{"trial_id": trial_id, "user_attr": {k: v}} for k, v in attrs.items()])

    def set_study_user_attrs(self, study_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of one study in one append to the journal."""
        self._append(JournalOperation.SET_STUDY_USER_ATTR,
                     [{"study_id": study_id, "user_attr": {k: v}} for k, v in attrs.items()])

    def _append(self, op_code: int, records: list[dict[str, Any]]) -> None:
        # what JournalStorage._write_log does for one record, for several at once. Replaying
        # this worker's record of a trial finished meanwhile (failed as stale by another
        # worker) raises, and would raise again for each later record of the batch at the next,
        # unrelated read: read past all of them, then raise the first error
        if not records:
            return
        with self._thread_lock:
            worker_id = self._replay_result.worker_id
            self._backend.append_logs([{"op_code": op_code, "worker_id": worker_id, **r} for r in records])
            first: Exception | None = None
            for _ in range(len(records) + 1):
                try:
                    self._sync_with_backend()
                    break
                except (UpdateFinishedTrialError, KeyError) as exc:
                    first = first or exc
            if first is not None:
                raise first


# ---------------------------------------------------------------------------------------------
# RDB storage with connection retries


_NOT_TRANSIENT = (
    "authentication failed", "password", "does not exist", "pg_hba.conf", "access denied",
    "unknown database", "no such", "permission denied", "invalid dsn", "unable to open database",
)


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database could not be reached: worth a retry."""
    import sqlalchemy.exc as sa_exc  # sqlalchemy is slow to import; only RDB storages need it

    for e in _chain(exc):
        if isinstance(e, (sa_exc.DisconnectionError, sa_exc.InterfaceError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and getattr(e, "connection_invalidated", False):
            return True
        name = type(e).__name__
        if isinstance(e, sa_exc.OperationalError) or name in ("OperationalError", "InterfaceError"):
            msg = str(e).lower()
            return not any(s in msg for s in _NOT_TRANSIENT)
    return False


def _schema_race(exc: BaseException) -> bool:
    """A CREATE TABLE/TYPE or version row that another process created a moment earlier."""
    for e in _chain(exc):
        msg = str(e).lower()
        if any(s in msg for s in _SCHEMA_RACE):
            return True
    return False


# what the loser of two processes creating one new database's schema sees: a table (or, for
# SQLite, alembic's version row: "UNIQUE constraint failed: alembic_version.version_num") that
# the winner created a moment earlier
_SCHEMA_RACE = (
    "already exists", "duplicate key value", "duplicate entry",
    "unique constraint failed: alembic_version", "unique constraint failed: version_info",
)


def _first_line(exc: BaseException) -> str:
    for e in _chain(exc):  # the driver's own message is the most telling
        if type(e).__module__.split(".")[0] not in ("sqlalchemy", "optuna"):
            text = str(e).strip().splitlines()
            if text:
                return f"{type(e).__name__}: {text[0].strip()}"[:300]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].strip() if text else ''}"[:300]


class _Retrier:
    """Connect with retries: one warning line per retry, then one SparsesearchError.

    After retries ran out once, later connects try once only until one succeeds again, so a
    dead database fails a worker quickly instead of once per storage call.
    """

    def __init__(self, url: str, retries: int, wait: float) -> None:
        self.url = url
        self.retries = max(0, int(retries))
        self.wait = max(0.0, float(wait))
        self.down = False
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def attach(self, engine: Any) -> None:
        """Retry later (re)connections of ``engine`` too (e.g. after the server restarted)."""
        from sqlalchemy import event  # sqlalchemy is slow to import; only RDB storages need it

        def connect(dialect, conn_rec, cargs, cparams):  # noqa: ANN001
            return self("reconnecting", lambda: dialect.connect(*cargs, **cparams))

        event.listen(engine, "do_connect", connect)

    def __call__(self, what: str, fn: Callable[[], Any]) -> Any:
        retries = 0 if self.down else self.retries
        for attempt in range(retries + 1):
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - sorted below
                if not is_connection_error(exc):
                    raise
                if attempt >= retries:
                    with self._lock:
                        self.down = True
                    verb = "open" if what == "connecting" else "reach"
                    raise SparsesearchError(
                        f"cannot {verb} storage {_mask(self.url)}: unreachable after "
                        f"{retries + 1} attempt{'s' if retries else ''}: {_first_line(exc)}"
                    ) from None
                delay = min(self.wait * (2**attempt), 30.0)
                log.warning("cannot reach storage %s (%s): %s; retry %d/%d in %.1fs",
                            _mask(self.url), what, _first_line(exc), attempt + 1, retries, delay)
                time.sleep(delay)
            else:
                if self.down:
                    with self._lock:
                        self.down = False
                    log.warning("storage %s is reachable again", _mask(self.url))
                return out
        raise AssertionError("unreachable")  # pragma: no cover


@_shield_writes
class _RDBStorage(_NotesWorker, RDBStorage):
    """RDBStorage whose heartbeat thread survives a missed beat (a lost connection), which
    records the worker of a trial (``WORKER_ATTR``) and writes several attributes in one
    transaction (:meth:`set_trial_user_attrs`, :meth:`set_study_user_attrs`)."""

    _sparsesearch_retrier: _Retrier | None = None

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of one trial in one transaction (Optuna's
        ``set_trial_user_attr`` makes a transaction per key, most of a call's cost): the trial
        is checked once, and on SQLite and PostgreSQL all keys are one multi-row upsert."""
        from optuna.storages._rdb import models  # imports sqlalchemy (see above)

        with _create_scoped_session(self.scoped_session, True) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            self._upsert_attrs(session, models.TrialUserAttributeModel, trial_id, attrs)

    def _upsert(self, model: Any, keys: tuple[str, ...], columns: tuple[str, ...]) -> Any:
        """The insert-or-replace statement of ``model`` on its unique ``keys`` (SQLite and
        PostgreSQL), built once and executed with many rows (SQLAlchemy caches its compiled
        form; a multi-row VALUES of varying length would be compiled anew each time)."""
        cache = self.__dict__.setdefault("_sparsesearch_upserts", {})
        if model not in cache:
            from sqlalchemy.dialects import postgresql, sqlite  # sqlalchemy is slow to import

            insert = (sqlite if self.engine.name == "sqlite" else postgresql).insert(model)
            cache[model] = insert.on_conflict_do_update(
                index_elements=[getattr(model, k) for k in keys],
                set_={c: getattr(insert.excluded, c) for c in columns},
            )
        return cache[model]

    def _can_upsert(self) -> bool:
        dialect = self.engine.name
        return dialect == "postgresql" or (dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0))

    def _upsert_attrs(self, session: Any, model: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """``attrs`` of a trial (user or system ``model``) inserted or replaced in ``session``:
        one statement for all keys on SQLite and PostgreSQL, Optuna's own upsert key by key
        elsewhere."""
        if not attrs:
            return
        if self._can_upsert():
            rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
            session.execute(self._upsert(model, ("trial_id", "key"), ("value_json",)), rows)
        else:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, model, trial_id, key, value)

    def _upsert_intermediate_values(self, session: Any, trial_id: int, values: Mapping[int, float]) -> None:
        from optuna.storages._rdb import models  # imports sqlalchemy (see above)

        if not values:
            return
        if not self._can_upsert():
            for step, value in values.items():
                self._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
            return
        model = models.TrialIntermediateValueModel
        rows = []
        for step, value in values.items():
            stored, kind = model.intermediate_value_to_stored_repr(value)
            rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                         "intermediate_value_type": kind})
        session.execute(self._upsert(model, ("trial_id", "step"), ("intermediate_value", "intermediate_value_type")),
                        rows)

    def write_trial(self, trial_id: int, *, params: Mapping[str, tuple[float, Any]] | None = None,
                    intermediate_values: Mapping[int, float] | None = None,
                    user_attrs: Mapping[str, Any] | None = None, system_attrs: Mapping[str, Any] | None = None,
                    heartbeat: bool = False, state: TrialState | None = None,
                    values: Sequence[float] | None = None) -> datetime.datetime | None:
        """Several writes of one running trial in one transaction (what
        :class:`~sparsesearch.write_behind.WriteBehindStorage` held): ``params`` (name →
        internal value and distribution, already checked against the study's), intermediate
        values, user and system attributes, a ``heartbeat`` (as :meth:`record_heartbeat`), and
        with a finished ``state`` its values and state. Returns the ``datetime_complete``
        written with a finished state, else None."""
        from optuna.storages._rdb import models  # imports sqlalchemy (see above)

        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=state is not None)
            self.check_trial_is_updatable(trial_id, trial.state)
            for name, (internal, distribution) in (params or {}).items():
                session.add(models.TrialParamModel(
                    trial_id=trial_id, param_name=name, param_value=internal,
                    distribution_json=optuna.distributions.distribution_to_json(distribution)))
            self._upsert_intermediate_values(session, trial_id, intermediate_values or {})
            self._upsert_attrs(session, models.TrialUserAttributeModel, trial_id, user_attrs or {})
            self._upsert_attrs(session, models.TrialSystemAttributeModel, trial_id, system_attrs or {})
            if heartbeat:
                self._beat(session, trial_id)
            if state is None:
                return None
            for objective, value in enumerate(values or ()):
                self._set_trial_value_without_commit(session, trial, objective, value)
            trial.state = state
            trial.datetime_complete = done = datetime.datetime.now()
        return done

    def set_study_user_attrs(self, study_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of one study in one transaction: a worker that sees one of
        them sees them all."""
        from optuna.storages._rdb import models  # imports sqlalchemy (see above)

        with _create_scoped_session(self.scoped_session, True) as session:
            study = models.StudyModel.find_or_raise_by_id(study_id, session)
            for key, value in attrs.items():
                attribute = models.StudyUserAttributeModel.find_by_study_and_key(study, key, session)
                if attribute is None:
                    session.add(models.StudyUserAttributeModel(study_id=study_id, key=key,
                                                               value_json=json.dumps(value)))
                else:
                    attribute.value_json = json.dumps(value)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_sparsesearch_upserts", None)  # SQLAlchemy statements: built again on use
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        if self._sparsesearch_retrier is not None:
            self._sparsesearch_retrier.attach(self.engine)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's rule (heartbeat older than the grace period, by the database clock), plus:
        a RUNNING trial that never recorded a heartbeat (its worker died in the moment between
        starting it and the first beat) is stale once it started longer ago than the grace
        period (its ``datetime_start``, written by the worker's clock, against this one's;
        Optuna skips such trials, which then stay RUNNING forever). Each stale trial gets its
        ``fail_reason`` first."""
        import sqlalchemy  # sqlalchemy is slow to import; only RDB storages need it
        from optuna.storages._rdb import models  # imports sqlalchemy (see above)
        from sqlalchemy import orm  # sqlalchemy is slow to import; only RDB storages need it

        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        found: list[tuple[int, str]] = []
        with _create_scoped_session(self.scoped_session, True) as session:
            db_now = session.execute(sqlalchemy.func.now()).scalar()
            assert db_now is not None
            db_now = db_now.replace(tzinfo=None)  # as Optuna does (PostgreSQL is tz-aware)
            here_now = datetime.datetime.now()
            running = (
                session.query(models.TrialModel)
                .options(orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            for trial in running:
                if trial.heartbeats:
                    age = (db_now - trial.heartbeats[0].heartbeat).total_seconds()
                    why = f"its last heartbeat is {age:.0f} s old"
                elif trial.datetime_start is not None:
                    age = (here_now - trial.datetime_start).total_seconds()
                    why = f"it has been RUNNING {age:.0f} s without a heartbeat"
                else:
                    continue
                if age > grace:
                    found.append((trial.trial_id, why))
        for trial_id, why in found:
            worker = None
            try:
                worker = self.get_trial_system_attrs(trial_id).get(WORKER_ATTR)
            except Exception:  # noqa: BLE001 - only for the reason's wording
                pass
            self._note_stale(trial_id, why, grace, worker)
        return [trial_id for trial_id, _ in found]

    @staticmethod
    def _beat(session: Any, trial_id: int) -> None:
        """The heartbeat of a trial in ``session``, by the database clock (Optuna's
        ``record_heartbeat`` in another's transaction)."""
        import sqlalchemy  # sqlalchemy is slow to import; only RDB storages need it
        from optuna.storages._rdb import models  # imports sqlalchemy (see above)

        beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
        if beat is None:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id))
        else:
            beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar()

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._note_worker(trial_id)
            super().record_heartbeat(trial_id)
        except UpdateFinishedTrialError:
            pass
        except Exception as exc:  # noqa: BLE001 - the next beat may work; stale detection copes
            log.warning("could not record the heartbeat of a trial: %s", _first_line(exc))


def _engine_kwargs(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url  # sqlalchemy is slow to import; only RDB storages need it

    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}  # wait for a writer's lock instead of failing
    return kwargs


def _open_rdb(url: str, *, heartbeat_interval, grace_period, connect_retries, retry_wait,
              write_behind: float) -> WriteBehindStorage:
    from sqlalchemy.engine import make_url  # sqlalchemy is slow to import; only RDB storages need it

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's ArgumentError
        raise SparsesearchError(f"invalid storage URL {_mask(url)}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    retrier = _Retrier(url, connect_retries, retry_wait)

    def build() -> RDBStorage:
        for attempt in range(10):
            try:
                return new()
            except Exception as exc:  # noqa: BLE001 - sorted below
                # workers creating the schema of a new database at the same moment: the
                # loser's CREATE fails; a moment later the tables exist and it just opens them
                if attempt == 9 or not _schema_race(exc):
                    raise
                log.debug("storage schema created concurrently by another worker: %s", _first_line(exc))
                time.sleep(0.05 + random.random() * 0.2)
        raise AssertionError("unreachable")  # pragma: no cover

    def new() -> RDBStorage:
        return _RDBStorage(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRY) if heartbeat_interval else None,
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = retrier("connecting", build)
    except ModuleNotFoundError as exc:
        extra = " (pip install 'sparsesearch[postgres]')" if backend == "postgresql" else ""
        raise SparsesearchError(
            f"the database driver for {_mask(url)} is not installed: {exc.name}{extra}"
        ) from None
    except SparsesearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad credentials, missing database, schema
        raise SparsesearchError(f"cannot open storage {_mask(url)}: {_first_line(exc)}") from None

    retrier.attach(storage.engine)  # later (re)connections are retried the same way
    storage._sparsesearch_retrier = retrier
    return WriteBehindStorage(storage, interval=write_behind, trial_system_attrs=storage.worker_attrs)


# ---------------------------------------------------------------------------------------------


def make_storage(
    spec: str | os.PathLike | BaseStorage | None,
    *,
    study_name: str,
    runs_dir: str | os.PathLike = "runs",
    heartbeat_interval: int | None = _DEFAULT,
    grace_period: int | None = _DEFAULT,
    workers: int = 1,
    connect_retries: int = _DEFAULT,
    retry_wait: float = _DEFAULT,
) -> BaseStorage:
    """An Optuna storage for ``spec`` (see the module docstring), shared safely by ``workers``.

    Args:
        spec: ``None`` (the run folder's default), ``journal:PATH`` / ``PATH.log``, a SQLAlchemy
            URL, or an Optuna storage object (returned unchanged).
        heartbeat_interval: seconds between heartbeats of a running trial (default 20, or
            ``SPARSESEARCH_HEARTBEAT_INTERVAL``); ``None`` turns heartbeats off.
        grace_period: seconds without heartbeat after which a RUNNING trial is failed and
            queued again (default twice the interval, or ``SPARSESEARCH_HEARTBEAT_GRACE``).
        connect_retries, retry_wait: retries of an unreachable database, the first after
            ``retry_wait`` seconds, doubling (defaults 5 and 1.0 s; ``SPARSESEARCH_DB_RETRIES``,
            ``SPARSESEARCH_DB_RETRY_WAIT``).
    Raises:
        SparsesearchError: a bad spec, a missing driver, or a database still unreachable after
            the retries (one line, password masked).
    """
    if isinstance(spec, BaseStorage):
        return spec
    if heartbeat_interval is _DEFAULT:
        heartbeat_interval = _env_number("SPARSESEARCH_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL, int)
    if grace_period is _DEFAULT:
        grace_period = _env_number("SPARSESEARCH_HEARTBEAT_GRACE", None, int)
    if connect_retries is _DEFAULT:
        connect_retries = _env_number("SPARSESEARCH_DB_RETRIES", 5, int, off=0)
    if retry_wait is _DEFAULT:
        retry_wait = _env_number("SPARSESEARCH_DB_RETRY_WAIT", 1.0, float, off=0.0)
    if heartbeat_interval is not None and heartbeat_interval <= 0:
        raise SparsesearchError(f"heartbeat_interval must be > 0 seconds (or None), got {heartbeat_interval}")
    if grace_period is not None and grace_period <= 0:
        raise SparsesearchError(f"grace_period must be > 0 seconds (or None), got {grace_period}")
    if heartbeat_interval is None:
        grace_period = None
    resolved = resolve_storage_spec(spec, study_name=study_name, runs_dir=runs_dir, workers=workers)
    if resolved.startswith("journal:"):
        path = Path(resolved[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            repair_journal(path)
            backend = JournalFileBackend(str(path))
        except OSError as exc:
            raise SparsesearchError(f"cannot open journal storage {path}: {exc}") from None
        try:
            return HeartbeatJournalStorage(
                backend,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRY) if heartbeat_interval else None,
            )
        except ValueError as exc:  # json.JSONDecodeError, Optuna's "Invalid log format."
            raise SparsesearchError(_damaged_journal(path, exc)) from None
    if workers > 1 and resolved.startswith("sqlite"):
        log.warning("%d workers share the SQLite file %s: SQLite serialises writers and may report "
                    "'database is locked'; prefer journal:PATH or a server database",
                    workers, _mask(resolved))
    write_behind = _env_number("SPARSESEARCH_WRITE_BEHIND", DEFAULT_INTERVAL, float, off=0.0)
    if not (math.isfinite(write_behind) and write_behind >= 0):
        raise SparsesearchError(f"SPARSESEARCH_WRITE_BEHIND must be a number of seconds >= 0, got {write_behind:g}")
    return _open_rdb(resolved, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                     connect_retries=connect_retries, retry_wait=retry_wait, write_behind=write_behind)


def repair_journal(path: str | os.PathLike) -> Path | None:
    """Repair a journal file whose last record was cut short (its writer died mid-write): the
    torn tail is removed (or, when it is a whole record that only lacks its newline, completed)
    under the journal's own lock, so the next append does not glue onto it and make the whole
    file unreadable. The file as it was is kept next to it (``NAME.torn-TIME.bak``) and one
    warning line says so. Returns the backup's path (None when nothing was wrong)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None  # the usual case: one byte read
    with get_lock_file(JournalFileSymlinkLock(str(path))):  # no writer is mid-append now
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:  # cut just before its newline: keep the record
            with open(path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            log.warning("journal %s: its last record lacked its newline (a worker died while "
                        "writing it): completed", path)
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(path, backup)
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    log.warning("journal %s: its last record was cut short (a worker died while writing it): "
                "removed those %d bytes; the file as it was is kept as %s", path, len(tail), backup)
    return backup


def _damaged_journal(path: Path, exc: BaseException) -> str:
    """One line naming the first unreadable record of a journal file."""
    where = ""
    try:
        with open(path, "rb") as f:
            lines = f.readlines()
        for number, line in enumerate(lines, start=1):
            try:
                json.loads(line)
            except ValueError:
                if number < len(lines):
                    where = f" at line {number} of {len(lines)}"
                    break
    except OSError:
        pass
    return (f"journal storage {path} is damaged{where} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}): sparsesearch neither reads nor appends to it. "
            "Keep a copy, then remove the damaged line to recover the records around it (or "
            "restore the file from a backup)")


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the storage (a lost or refused database connection)."""
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        return True
    return is_connection_error(exc)


def describe_storage_error(exc: BaseException, storage: Any) -> str:
    """One line for a failed storage operation (password masked)."""
    return (f"storage {storage_label(storage)} failed: {_first_line(exc)}; a trial that was "
            "running stays RUNNING until a worker with heartbeats marks it FAIL and queues it again")
