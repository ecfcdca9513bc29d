"""A progress display for ``sparsesearch run``: trial i/N, best so far, ETA.

:class:`Progress` is an Optuna study callback (``search(..., callbacks=[progress])``). On a
terminal it redraws one status line on stderr; otherwise (logs, CI) it prints one line per
finished trial. Log records go through :class:`ProgressLogHandler`, which clears the status
line first so logs and the bar do not overwrite each other.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from typing import IO

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["Progress", "ProgressLogHandler", "format_duration"]


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s`` or ``42s`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Progress:
    """Study callback showing ``trial i/N``, the fine-tuning epochs spent of the study's compute
    budget, the best validation accuracy so far and an ETA.

    ``n_trials`` are the screening trials of this invocation (None: until the compute budget is
    spent); the ETA follows the epochs spent against the compute budget when the study has one,
    and ``timeout`` bounds it. ``stream`` defaults to stderr; ``tty`` to ``stream.isatty()``.
    """

    def __init__(
        self,
        n_trials: int | None,
        *,
        timeout: float | None = None,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        width: int = 100,
        header: str | None = None,
    ) -> None:
        self.n_trials = n_trials
        self.timeout = timeout
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self.start = time.monotonic()
        self.done = 0
        self.best: tuple[float, int] | None = None  # (value, trial number)
        self.states: dict[str, int] = {}
        self._line = ""
        self._initialised = False
        self.header = header  # printed once, before the first status line
        self.compute: float | None = None  # the study's compute budget (epochs), read at start
        self.epochs_before = 0  # epochs the study had spent before this invocation
        self.epochs = 0  # epochs of this invocation's trials

    # -- the callback -------------------------------------------------------------------------

    def _init_best(self, study: optuna.Study, current: FrozenTrial) -> None:
        self._initialised = True
        if current.datetime_start is not None:  # the clock starts with the first trial, not
            # with dense training before it
            now = datetime.datetime.now(current.datetime_start.tzinfo)
            since = (now - current.datetime_start).total_seconds()
            self.start = time.monotonic() - max(since, 0.0)
        for t in study.get_trials(deepcopy=False):
            if t.number != current.number:
                self._update_best(t)
                self.epochs_before += int(t.user_attrs.get("epochs", 0) or 0)
        compute = study.user_attrs.get("compute")
        if isinstance(compute, dict) and compute.get("epochs"):
            self.compute = float(compute["epochs"])

    def _update_best(self, trial: FrozenTrial) -> None:
        if trial.state != TrialState.COMPLETE or not trial.values:
            return
        value = float(trial.values[0])
        if self.best is None or value > self.best[0]:
            self.best = (value, trial.number)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self._initialised:
            self._init_best(study, trial)
        self.done += 1
        self.epochs += int(trial.user_attrs.get("epochs", 0) or 0)
        self.states[trial.state.name] = self.states.get(trial.state.name, 0) + 1
        self._update_best(trial)
        self.show(self.status(trial))

    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.start
        per_trial = elapsed / max(self.done, 1)
        candidates = []
        if self.compute is not None and self.epochs:  # the compute budget ends the study
            left = self.compute - self.epochs_before - self.epochs
            candidates.append(elapsed / self.epochs * max(left, 0.0))
        elif self.n_trials is not None:
            candidates.append(per_trial * max(self.n_trials - self.done, 0))
        if self.timeout is not None:
            candidates.append(max(self.timeout - elapsed, 0.0))
        return min(candidates) if candidates else None

    def status(self, trial: FrozenTrial | None = None) -> str:
        total = "?" if self.n_trials is None else str(self.n_trials)
        parts = [f"trial {self.done}/{total}" if self.n_trials is None or self.done <= self.n_trials
                 else f"trial {self.done}"]
        if self.compute is not None:
            parts.append(f"epochs {self.epochs_before + self.epochs}/{self.compute:g}")
        if trial is not None:
            what = trial.state.name.lower()
            heuristic = trial.user_attrs.get("heuristic")
            final = trial.user_attrs.get("phase") == "final"
            tag = f"#{trial.number}" + (" final" if final else "") + (f" {heuristic}" if heuristic else "")
            if trial.state == TrialState.COMPLETE and trial.values:
                what = f"val {trial.values[0]:.4f}"
            parts.append(f"{tag}: {what}")
        if self.best is not None:
            parts.append(f"best {self.best[0]:.4f} (#{self.best[1]})")
        elapsed = time.monotonic() - self.start
        parts.append(f"{format_duration(elapsed)} elapsed")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return " | ".join(parts)

    # -- drawing ------------------------------------------------------------------------------

    def show(self, line: str) -> None:
        if self.header:
            self.stream.write(self.header + "\n")
            self.header = None
        if self.tty:
            line = line[: self.width]
            self.stream.write("\r\033[K" + line)
            self._line = line
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the status line (before a log record is written)."""
        if self.tty and self._line:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def redraw(self) -> None:
        if self.tty and self._line:
            self.stream.write(self._line)
            self.stream.flush()

    def close(self) -> None:
        """End the status line (a newline on a terminal)."""
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = ""


class ProgressLogHandler(logging.StreamHandler):
    """A stderr log handler that keeps a :class:`Progress` status line intact."""

    def __init__(self, progress: Progress | None = None, stream: IO[str] | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)
        if self.progress is not None:
            self.progress.redraw()
