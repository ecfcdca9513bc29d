"""A progress display for ``sparsesearch run``: trial i/N, best so far, ETA.

:class:`Progress` is an Optuna study callback (``search(..., callbacks=[progress])``). On a
terminal it redraws one status line on stderr, fitted to the terminal's width: a bar (tqdm's)
of the fine-tuning epochs spent of the compute budget, the trial count, the best so far, the
ETA, and the epoch of the training that is running, the dense model's included (the per-epoch
records that :func:`sparsesearch.train.fit` logs, see :meth:`Progress.epoch`). Otherwise (logs,
CI) it prints one plain line per finished trial. Log records go through
:class:`ProgressLogHandler`, which clears the status line first so logs and the bar do not
overwrite each other, and hands the per-epoch records to the display.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import shutil
import sys
import time
from typing import IO, Any, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm
from tqdm.utils import disp_len, disp_trim

from sparsesearch.train import EPOCH_RECORD

__all__ = ["Progress", "ProgressLogHandler", "format_duration"]

BAR_MIN, BAR_MAX = 8, 30  # the bar's width on a terminal: dropped below BAR_MIN columns


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


def terminal_width(stream: IO[str]) -> int:
    """The columns a status line may use on ``stream``: the terminal's width less one (a line
    as wide as the terminal wraps on some), from the stream's own terminal, else ``COLUMNS`` or
    stdout's (:func:`shutil.get_terminal_size`, 80 when unknown). Asked on every redraw, so a
    resized terminal is followed."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a file (io.UnsupportedOperation is both)
        columns = 0
    if columns <= 0:
        columns = shutil.get_terminal_size().columns
    return max(columns - 1, 1)


class Progress:
    """Study callback showing ``trial i/N``, the fine-tuning epochs spent of the study's compute
    budget, the best validation accuracy so far and an ETA.

    ``n_trials`` are the screening trials of this invocation (None: until the compute budget is
    spent); the ETA follows the epochs spent against the compute budget when the study has one,
    and ``timeout`` bounds it. ``stream`` defaults to stderr; ``tty`` to ``stream.isatty()``.
    On a terminal the line is at most ``width`` columns (default: :func:`terminal_width`, asked
    on each redraw): the less important parts are left out first (elapsed time, the last
    trial's result, the bar, the epoch count), the ETA and the best trial last; the label (the
    trial count, and the running training's epoch) stays. Not on a
    terminal, one plain line per finished trial (:meth:`status`), whatever its length.
    """

    def __init__(
        self,
        n_trials: int | None,
        *,
        timeout: float | None = None,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        width: int | None = None,
        header: str | None = None,
    ) -> None:
        self.n_trials = n_trials
        self.timeout = timeout
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width  # None: the terminal's, asked on each redraw
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self._ascii: str | bool = False if encoding.startswith("utf") else " #"  # tqdm's bar
        self.created = self.start = time.monotonic()
        self.done = 0
        self.best: tuple[float, int] | None = None  # (value, trial number)
        self.states: dict[str, int] = {}
        self._line = ""
        self._initialised = False
        self.header = header  # printed once, before the first status line
        self.compute: float | None = None  # the study's compute budget (epochs), read at start
        self.epochs_before = 0  # epochs the study had spent before this invocation
        self.epochs = 0  # epochs of this invocation's finished trials
        self.current: dict[str, Any] | None = None  # the running training's last epoch record
        self.live = 0  # epochs of the running trial so far (from the epoch records)
        self.last: FrozenTrial | None = None  # the last finished trial
        self._dense_first: tuple[float, int] | None = None  # (time, epoch) of the first dense record

    # -- the callback -------------------------------------------------------------------------

    def _init_best(self, study: optuna.Study, current: FrozenTrial) -> None:
        self._initialised = True
        if current.datetime_start is not None:  # the clock starts with the first trial, not
            # with dense training before it
            now = datetime.datetime.now(current.datetime_start.tzinfo)
            since = (now - current.datetime_start).total_seconds()
            self.start = time.monotonic() - max(since, 0.0)
        for t in study.get_trials(deepcopy=False):
            # what the study held before this invocation: the trials finished before this
            # display was created (a --workers parent sees its workers' first trials late,
            # and they come through this callback, so they are not counted twice)
            if t.number != current.number and self._finished_before(t):
                self._update_best(t)
                self.epochs_before += int(t.user_attrs.get("epochs", 0) or 0)
        compute = study.user_attrs.get("compute")
        if isinstance(compute, dict) and compute.get("epochs"):
            self.compute = float(compute["epochs"])

    def _finished_before(self, trial: FrozenTrial) -> bool:
        done = trial.datetime_complete
        if done is None or not trial.state.is_finished():
            return False
        created = datetime.datetime.now(done.tzinfo) - datetime.timedelta(
            seconds=time.monotonic() - self.created)
        return done < created

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
        self.current, self.live = None, 0  # the trial's epochs are counted from its record
        self.epochs += int(trial.user_attrs.get("epochs", 0) or 0)
        self.states[trial.state.name] = self.states.get(trial.state.name, 0) + 1
        self._update_best(trial)
        self.last = trial
        self.show(self.status(trial))

    def epoch(self, info: Mapping[str, Any]) -> None:
        """One epoch of training finished: ``info`` is the :data:`sparsesearch.train.EPOCH_RECORD`
        of :func:`~sparsesearch.train.fit` (``phase`` "dense" or "trial", ``model``, ``epoch``,
        ``epochs``, ...). Redraws the status line on a terminal; nothing otherwise."""
        self.current = dict(info)
        if info.get("phase") != "dense":
            self.live += 1
        elif self._dense_first is None:
            self._dense_first = (time.monotonic(), int(info.get("epoch", 1)))
        if self.tty:
            self.show(self.status())

    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.start
        per_trial = elapsed / max(self.done, 1)
        candidates = []
        spent = self.epochs + (self.live if self._initialised else 0)
        if self.compute is not None and spent:  # the compute budget ends the study
            left = self.compute - self.epochs_before - spent
            candidates.append(elapsed / spent * max(left, 0.0))
        elif self.n_trials is not None and self.done:
            candidates.append(per_trial * max(self.n_trials - self.done, 0))
        if self.timeout is not None and self._initialised:
            candidates.append(max(self.timeout - elapsed, 0.0))
        return min(candidates) if candidates else None

    def status(self, trial: FrozenTrial | None = None) -> str:
        """The plain line (one per finished trial when not on a terminal)."""
        parts = [self._count()]
        if self.compute is not None:
            parts.append(f"epochs {self.epochs_before + self.epochs}/{self.compute:g}")
        if trial is not None:
            parts.append(self._trial_result(trial))
        if self.best is not None:
            parts.append(f"best {self.best[0]:.4f} (#{self.best[1]})")
        elapsed = time.monotonic() - self.start
        parts.append(f"{format_duration(elapsed)} elapsed")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return " | ".join(parts)

    def _count(self) -> str:
        if self.n_trials is None:
            return f"trial {self.done}/?"
        return f"trial {self.done}/{self.n_trials}" if self.done <= self.n_trials else f"trial {self.done}"

    @staticmethod
    def _trial_result(trial: FrozenTrial) -> str:
        what = trial.state.name.lower()
        heuristic = trial.user_attrs.get("heuristic")
        final = trial.user_attrs.get("phase") == "final"
        tag = f"#{trial.number}" + (" final" if final else "") + (f" {heuristic}" if heuristic else "")
        if trial.state == TrialState.COMPLETE and trial.values:
            what = f"val {trial.values[0]:.4f}"
        return f"{tag}: {what}"

    # -- the terminal line --------------------------------------------------------------------

    def _parts(self) -> tuple[str, tuple[float, float] | None, list[tuple[int, int, str]]]:
        """The terminal line's label, the bar's ``(n, total)`` (None: no bar), and its other
        parts as ``(position, importance, text)`` (importance 0 is kept longest)."""
        now = time.monotonic()
        cur = self.current
        parts: list[tuple[int, int, str]] = []
        if cur is not None and cur.get("phase") == "dense":
            # the dense model trains before the first trial
            done, total = int(cur["epoch"]), int(cur["epochs"])
            elapsed = now - self.created
            t0, e0 = self._dense_first or (self.created, 0)  # the rate from the first epoch's end
            per_epoch = (now - t0) / (done - e0) if done > e0 else elapsed / max(done, 1)
            parts.append((1, 2, f"{done}/{total} epochs"))
            if cur.get("train_loss") is not None:
                parts.append((2, 4, f"loss {cur['train_loss']:.4f}"))
            parts.append((5, 5, f"{format_duration(elapsed)} elapsed"))
            parts.append((6, 0, f"ETA {format_duration(per_epoch * (total - done))}"))
            return f"dense {cur.get('model', 'model')}", (done, max(total, 1)), parts
        label = self._count()
        if cur is not None:  # the running trial, and its epoch
            n = self.done + 1
            total = "?" if self.n_trials is None else self.n_trials
            label = (f"trial {n}/{total}" if self.n_trials is None or n <= self.n_trials
                     else f"trial {n}") + f" epoch {cur['epoch']}/{cur['epochs']}"
        bar: tuple[float, float] | None = None
        if self.compute is not None:
            spent = self.epochs_before + self.epochs + self.live
            bar = (min(spent, self.compute), self.compute)
            parts.append((1, 2, f"{spent}/{self.compute:g} epochs"))
        elif self.n_trials:
            bar = (min(self.done, self.n_trials), self.n_trials)
        if self.best is not None:
            parts.append((3, 1, f"best {self.best[0]:.4f} (#{self.best[1]})"))
        if self.last is not None:
            parts.append((4, 4, f"last {self._trial_result(self.last)}"))
        parts.append((5, 5, f"{format_duration(now - self.start)} elapsed"))
        eta = self.eta()
        if eta is not None:
            parts.append((6, 0, f"ETA {format_duration(eta)}"))
        return label, bar, parts

    def line(self, width: int | None = None) -> str:
        """The terminal status line, at most ``width`` columns (default: :attr:`width` or the
        terminal's): the least important parts are left out until it fits."""
        width = width if width is not None else (self.width or terminal_width(self.stream))
        label, bar, parts = self._parts()
        keep = sorted(parts, key=lambda p: p[1])
        show_bar = bar is not None
        BAR_IMPORTANCE = 3  # the bar is left out after the last trial's result, before the count

        def text(items: list[tuple[int, int, str]], bar_cols: int) -> str:
            shown = " | ".join(t for _, _, t in sorted(items))
            drawn = label
            if bar_cols:
                assert bar is not None
                meter = tqdm.format_meter(bar[0], bar[1], 0, ncols=bar_cols, bar_format="{bar}",
                                          ascii=self._ascii)
                drawn += f" |{meter}|"
            return drawn + (" " + shown if bar_cols and shown else " | " + shown if shown else "")

        while True:
            bar_cols = BAR_MIN if show_bar else 0
            candidate = text(keep, bar_cols)
            if disp_len(candidate) <= width:
                break
            least = keep[-1][1] if keep else -1
            if show_bar and least < BAR_IMPORTANCE:  # the bar goes before more important parts
                show_bar = False
            elif keep:
                keep = keep[:-1]
            else:
                return disp_trim(candidate, width)
        if show_bar:  # the bar takes the room left, up to BAR_MAX
            bar_cols = min(BAR_MAX, BAR_MIN + width - disp_len(candidate))
            candidate = text(keep, bar_cols)
        return candidate

    # -- drawing ------------------------------------------------------------------------------

    def show(self, line: str) -> None:
        """Print ``line`` (a finished trial's, off a terminal); on a terminal redraw the
        status line (:meth:`line`) in its place."""
        if self.header and (not self.tty or self.done):
            self.clear()
            self.stream.write(self.header + "\n")
            self.header = None
            self._line = ""
        if self.tty:
            line = self.line()
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
        """End the status line on a terminal: the last trial's status stays (a newline); the
        progress of a training that no finished trial followed (an error or Ctrl-C during dense
        training) is removed, so an error stays one line."""
        if self.tty and self._line:
            if self.done:
                self.current, self.live = None, 0
                self._line = self.line()
                self.stream.write("\r\033[K" + self._line + "\n")
            else:
                self.stream.write("\r\033[K")
            self.stream.flush()
            self._line = ""


class ProgressLogHandler(logging.StreamHandler):
    """A stderr log handler that keeps a :class:`Progress` status line intact.

    The per-epoch records of :func:`sparsesearch.train.fit` (those with the
    :data:`~sparsesearch.train.EPOCH_RECORD` attribute) go to :meth:`Progress.epoch`; they are
    printed as log lines too only when ``epoch_lines`` (``sparsesearch -v``).
    """

    def __init__(self, progress: Progress | None = None, stream: IO[str] | None = None,
                 *, epoch_lines: bool = True) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.progress = progress
        self.epoch_lines = epoch_lines

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, EPOCH_RECORD, None)
        if info is not None:
            if self.progress is not None:
                self.progress.epoch(info)
            if not self.epoch_lines:
                return
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)
        if self.progress is not None:
            self.progress.redraw()
