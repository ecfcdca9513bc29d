"""Ctrl-C and SIGTERM that never land in the middle of a storage write.

Python raises ``KeyboardInterrupt`` at whatever bytecode the main thread is running when the
signal arrives. Inside SQLAlchemy's commit that leaves the session half torn down: the study's
next storage call (Optuna's own clean-up of the interrupted trial) then fails with an
``AssertionError`` from SQLAlchemy instead of stopping cleanly, and a journal line can be cut
in two. So sparsesearch handles the two signals itself while a study runs:

- :func:`storage_call` marks a critical section (every method of sparsesearch's storages
  runs inside one). A signal that arrives inside it is remembered, and raised as soon as the
  outermost section ends: the write completes, then the study stops.
- :func:`handling_interrupts` installs the handlers (main thread only; elsewhere it does
  nothing): SIGINT raises ``KeyboardInterrupt``, SIGTERM :class:`Terminated` (a
  ``KeyboardInterrupt``, so both stop a study the same way). A SIGINT handler that is not
  Python's default is left alone (the user installed their own).

Outside a critical section a signal is raised at once, as Python would: a long training
epoch is interrupted where it is.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["Terminated", "handling_interrupts", "shielded", "storage_call"]

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the running trial is marked FAIL with its reason."""


_state = {"depth": 0, "pending": None}  # main thread only: signal handlers run there


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def storage_call() -> Iterator[None]:
    """A critical section: a signal handled by :func:`handling_interrupts` inside it is
    raised when the outermost section ends (also when it ends with an exception of its own,
    which the interrupt then carries as its context)."""
    if not _main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"] is not None:
            pending, _state["pending"] = _state["pending"], None
            raise pending()


def shielded(fn: F) -> F:
    """``fn`` run inside :func:`storage_call`."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with storage_call():
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


def _handler(kind: type[KeyboardInterrupt]) -> Callable[[int, Any], None]:
    def handle(signum: int, frame: Any) -> None:  # noqa: ARG001
        if _state["depth"] > 0:
            if _state["pending"] is None:
                _state["pending"] = kind
            return
        raise kind

    return handle


@contextlib.contextmanager
def handling_interrupts(*, sigterm: bool = True) -> Iterator[None]:
    """Within the block, SIGINT (and with ``sigterm`` SIGTERM) are raised outside storage
    calls only; the previous handlers come back on exit. Nests: an inner block changes
    nothing."""
    if not _main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _handler(KeyboardInterrupt))
    if sigterm and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _handler(Terminated))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
