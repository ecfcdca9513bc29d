"""The writes of the trials this process runs, held in memory and made in one transaction.

Optuna's RDB storage makes one transaction per write, and a trial of a search makes about
eighteen storage calls (its creation, one per parameter, one per reported epoch, its
attributes, its constraint, three reads of itself, its state, the stale-trial check). On SQLite
each costs 2-4 ms, a fixed cost per trial that a short trial feels (docs/benchmarks.md,
"Engine overhead"). :class:`WriteBehindStorage` is Optuna's own cache wrapper of RDB storages
(``_CachedStorage``, whose documented contract already allows this: writes of a trial's
attributes may be held, provided they reach the storage before its state does) extended to
the running trials of this process:

- Their parameters, intermediate values and user and system attributes are kept in memory,
  and reads of them (``trial.params``, the pruner, the sampler's view of the study) are
  answered from there.
- They are written together, in one transaction, at three moments:

  - when the trial is *published* (:meth:`WriteBehindStorage.publish`; sparsesearch calls it
    when a trial's training starts), so its parameters are in the storage before its first
    epoch ends: other workers' samplers see them, and the retry of a killed worker's trial
    gets them (the write runs on a thread of its own, beside the training);
  - when a write comes ``interval`` seconds or more after the previous transaction, so a
    dashboard or another worker sees a long trial's epochs at most ``interval`` late
    (default 5 s; ``SPARSESEARCH_WRITE_BEHIND``, 0 writes at once);
  - with the trial's final state: the state and everything written before it, or nothing.

- The stale-trial check that Optuna runs before every trial runs at most once per heartbeat
  interval (a trial is stale only after the grace period, twice that interval, anyway).
- Reads of the study's trials less than ``READ_WINDOW`` (50 ms) after the last one are answered
  from the cache: Optuna's ``ask`` reads the trials twice within a few milliseconds (for the
  queue, then for the sampler's snapshot); what another worker finished in between is seen at
  the next read, as what it finishes during the trial is. This process's own writes are seen
  at once (a write made at once expires the cached read), and a decision that must see every
  worker's trials reads afresh (:meth:`expire_reads`, ``record.trials_now``).
- ``trial_system_attrs`` (sparsesearch: the worker running the trial) are added to every trial
  this process takes on, and written with its first transaction, and so is the first heartbeat
  that Optuna's heartbeat thread records as the trial starts (the next beat, one heartbeat
  interval later, is written at once, so a trial slow to its first write is never stale).
- Writes are held only inside :func:`holding` (sparsesearch's runner: the trials it runs are
  told by the same process); elsewhere every write is made at once, so a trial asked in one
  process and told in another loses nothing.

A worker killed mid-trial loses at most the reports since its last transaction; Optuna's stale
trial retry does not inherit reports anyway. The backend must offer ``write_trial`` and
``set_trial_user_attrs`` (``storage._RDBStorage``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, TrialState

from sparsesearch.interrupts import storage_call

__all__ = ["DEFAULT_INTERVAL", "WriteBehindStorage", "holding"]

DEFAULT_INTERVAL = 5.0  # seconds a running trial's writes may wait for their transaction
READ_WINDOW = 0.05  # seconds within which a second read of a study's trials reuses the first

log = logging.getLogger("sparsesearch")


def _checked(attrs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``attrs``, refused at once (``TypeError``) if the storage could not write it
    as JSON, as a write made at once would be."""
    json.dumps(attrs)
    return copy.deepcopy(dict(attrs))


class _Held:
    """A running trial of this process: its current state (``trial``) and what of it the
    storage does not have yet."""

    __slots__ = ("trial", "params", "intermediate_values", "user_attrs", "system_attrs", "written_at",
                 "heartbeat", "ever_written")

    def __init__(self, trial: FrozenTrial) -> None:
        self.trial = trial
        self.params: dict[str, tuple[float, distributions.BaseDistribution]] = {}
        self.intermediate_values: dict[int, float] = {}
        self.user_attrs: dict[str, Any] = {}
        self.system_attrs: dict[str, Any] = {}
        self.written_at = time.monotonic()
        self.heartbeat = False  # the trial's first heartbeat, to go with its first write
        self.ever_written = False

    def writes(self) -> dict[str, Any]:
        """What is held, as ``write_trial``'s keyword arguments (copies)."""
        return {"params": dict(self.params), "intermediate_values": dict(self.intermediate_values),
                "user_attrs": dict(self.user_attrs), "system_attrs": dict(self.system_attrs),
                "heartbeat": self.heartbeat}

    def written(self, writes: dict[str, Any]) -> None:
        """``writes`` reached the storage: no longer held (unless written again since)."""
        for field, done in writes.items():
            if field == "heartbeat":
                self.heartbeat = self.heartbeat and not done
                continue
            held = getattr(self, field)
            for key, value in done.items():
                if key in held and held[key] is value:
                    del held[key]
        self.written_at = time.monotonic()
        self.ever_written = True


class WriteBehindStorage(_CachedStorage):
    """Optuna's cache wrapper of an RDB storage that holds the writes of this process's
    running trials until one transaction (see the module docstring)."""

    def __init__(self, backend: RDBStorage, *, interval: float = DEFAULT_INTERVAL,
                 trial_system_attrs: Callable[[int], dict[str, Any]] | None = None) -> None:
        if interval < 0:
            raise ValueError(f"the write-behind interval must be >= 0 seconds, got {interval=}")
        super().__init__(backend)
        self._interval = float(interval)
        self._trial_system_attrs = trial_system_attrs
        self._held: dict[int, _Held] = {}
        self._stale_checked: dict[int, float] = {}
        self._read_at: dict[int, float] = {}
        self._write_lock = threading.Lock()  # one transaction of held writes at a time
        self._publishing: list[threading.Thread] = []
        self._holding = 0  # > 0 while trials are run and told here (:func:`holding`)

    @property
    def url(self) -> str:
        """The wrapped RDB storage's URL."""
        return self._backend.url

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["_held"] = {}  # another process runs none of this one's trials
        state["_stale_checked"] = {}
        state["_read_at"] = {}
        del state["_write_lock"]
        state["_publishing"] = []
        state["_holding"] = 0
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._write_lock = threading.Lock()

    # -- taking a trial on --------------------------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            _, number = self._trial_id_to_study_id_and_number[trial_id]
            created = self._studies[study_id].trials[number]
        if created.state == TrialState.RUNNING:
            self._hold(trial_id, copy.deepcopy(created))
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._lock:
            held = self._held.get(trial_id)
        if held is None or not state.is_finished():
            self._read_at.clear()  # reads show this write (the cache keeps no unfinished state)
            won = super().set_trial_state_values(trial_id, state=state, values=values)
            if won and held is None and state == TrialState.RUNNING and self._holding:  # popped from the queue
                self._take(trial_id, self._backend.get_trial(trial_id))
            return won
        try:
            with storage_call(), self._write_lock:  # after a publish still under way
                done = self._backend.write_trial(trial_id, **held.writes(), state=state, values=values)
        finally:
            with self._lock:
                self._held.pop(trial_id, None)
            self._read_at.clear()  # written or not, reads show the storage's trial again
        final = held.trial  # as stored: only this process writes a trial it runs
        final.state = state
        final.values = None if values is None else [float(v) for v in values]
        final.datetime_complete = done
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            self._add_trials_to_cache(study_id, [final])  # finished: later reads are free
        return True

    def _take(self, trial_id: int, trial: FrozenTrial) -> None:
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            self._add_trials_to_cache(study_id, [trial])
        self._hold(trial_id, copy.deepcopy(trial))

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold the writes of the trials this process takes on inside the block: they must be
        told by this process too (``study.optimize`` does that). Outside, every write is made
        at once, as with Optuna's storage: a trial asked here may be told elsewhere."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def expire_reads(self, study_id: int) -> None:
        """The next read of the study's trials goes to the storage, however recent the last."""
        self._read_at.pop(study_id, None)

    def _hold(self, trial_id: int, trial: FrozenTrial) -> None:
        if not self._holding:
            return
        held = _Held(trial)
        extra = _checked(self._trial_system_attrs(trial_id)) if self._trial_system_attrs else {}
        held.system_attrs.update(extra)
        held.trial.system_attrs.update(copy.deepcopy(extra))
        with self._lock:
            self._held[trial_id] = held

    # -- held writes --------------------------------------------------------------------------

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        held = self._held.get(trial_id)
        if held is None:
            self._read_at.clear()
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            known = self._studies[study_id].param_distribution.get(param_name)
        if known is None:
            # first use of the name in this process: checked against the study's other trials
            # in the storage (Optuna's check), and written at once
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        else:
            distributions.check_distribution_compatibility(known, distribution)
            with self._lock:
                held.params[param_name] = (param_value_internal, distribution)
        with self._lock:
            held.trial.params[param_name] = distribution.to_external_repr(param_value_internal)
            held.trial.distributions[param_name] = distribution
        self._maybe_write(trial_id, held)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        held = self._held.get(trial_id)
        if held is None:
            self._read_at.clear()
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        with self._lock:
            held.intermediate_values[step] = intermediate_value
            held.trial.intermediate_values[step] = intermediate_value
        self._maybe_write(trial_id, held)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_user_attrs(trial_id, {key: value})

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes of a trial: held for a running trial of this process, else
        the backend's own batched write (``storage._RDBStorage.set_trial_user_attrs``)."""
        held = self._held.get(trial_id)
        if held is None:
            self._read_at.clear()
            return self._backend.set_trial_user_attrs(trial_id, attrs)
        attrs = _checked(attrs)
        with self._lock:
            held.user_attrs.update(attrs)
            held.trial.user_attrs.update(copy.deepcopy(attrs))
        self._maybe_write(trial_id, held)
        return None

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        held = self._held.get(trial_id)
        if held is None:
            self._read_at.clear()
            return super().set_trial_system_attr(trial_id, key, value)
        value = _checked({key: value})[key]
        with self._lock:
            held.system_attrs[key] = value
            held.trial.system_attrs[key] = copy.deepcopy(value)
        self._maybe_write(trial_id, held)
        return None

    def publish(self, trial_id: int) -> None:
        """Write what is held of ``trial_id`` in one transaction, on a thread of its own, so
        the trial goes on at once (its next write, or its end, waits for it; what it fails to
        write stays held and goes with that). :meth:`wait` waits for it."""
        if trial_id not in self._held:
            return
        thread = threading.Thread(target=self._publish, args=(trial_id,), daemon=True,
                                  name=f"sparsesearch-publish-{trial_id}")
        self._publishing = [t for t in self._publishing if t.is_alive()] + [thread]
        thread.start()

    def wait(self) -> None:
        """Wait until the writes :meth:`publish` started are done."""
        for thread in list(self._publishing):
            thread.join()

    def _publish(self, trial_id: int) -> None:
        try:
            self._write(trial_id)
        except Exception as exc:  # noqa: BLE001 - still held: the trial's next write retries it
            log.debug("could not publish trial %s yet: %s", trial_id, exc)

    def _maybe_write(self, trial_id: int, held: _Held) -> None:
        if time.monotonic() - held.written_at >= self._interval:
            with storage_call():
                self._write(trial_id)

    def _write(self, trial_id: int) -> None:
        with self._write_lock:
            with self._lock:
                held = self._held.get(trial_id)
                if held is None:  # ended meanwhile, all written
                    return
                writes = held.writes()
            if any(writes.values()):
                self._backend.write_trial(trial_id, **writes)
            with self._lock:
                held.written(writes)

    # -- reads --------------------------------------------------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            held = self._held.get(trial_id)
            if held is not None:
                return copy.deepcopy(held.trial)
        return super().get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            mine = {h.trial.number: h.trial for tid, h in self._held.items()
                    if self._trial_id_to_study_id_and_number.get(tid, (None,))[0] == study_id}
            if not mine:
                return trials
            # copies either way: a held trial changes as its run writes (a pruner that reads
            # the study and then writes its own trial must not see that write in what it read)
            return [copy.deepcopy(mine[t.number]) if t.number in mine else t for t in trials]

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        now = time.monotonic()
        last = self._read_at.get(study_id)
        if last is not None and now - last < READ_WINDOW and study_id in self._studies:
            return
        super()._read_trials_from_remote_storage(study_id)
        self._read_at[study_id] = time.monotonic()

    def record_heartbeat(self, trial_id: int) -> None:
        """A running trial's first heartbeat (Optuna's heartbeat thread beats as the trial
        starts) goes with its first write, moments later; later ones are written at once."""
        held = self._held.get(trial_id)
        if held is not None and not held.ever_written and not held.heartbeat:
            with self._lock:
                held.heartbeat = True
            return
        if held is not None:
            with self._lock:
                held.heartbeat = False  # written now: a trial slow to its first write still beats
        super().record_heartbeat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        interval = self.get_heartbeat_interval()
        now = time.monotonic()
        last = self._stale_checked.get(study_id)
        if interval and last is not None and now - last < interval:
            return []
        self._stale_checked[study_id] = now
        return super()._get_stale_trial_ids(study_id)


def holding(storage: Any) -> contextlib.AbstractContextManager[None]:
    """``storage.holding()`` for a :class:`WriteBehindStorage`, else a block that does nothing."""
    if isinstance(storage, WriteBehindStorage):
        return storage.holding()
    return contextlib.nullcontext()
