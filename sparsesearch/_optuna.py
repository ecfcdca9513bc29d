"""Keep Optuna quiet inside sparsesearch unless the user asked to hear it.

Optuna logs at INFO to stderr by default ("A new study created in RDB with name: ...",
"Using an existing study ...") and warns ``ExperimentalWarning`` for features sparsesearch
uses on purpose (TPE's ``group``, ...). From Python that is noise on every ``search()`` call;
sparsesearch reports what matters itself (failed trials are logged once, by ``search``).

:func:`quiet_optuna` is a context manager::

    with quiet_optuna():
        study = optuna.create_study(...)
        study.optimize(...)

Inside it Optuna's verbosity is at most WARNING and ``ExperimentalWarning`` is ignored; on exit
both are restored. It stays out of the way when the user asked for more:

* a verbosity the user set to DEBUG (``optuna.logging.set_verbosity(optuna.logging.DEBUG)``)
  is left alone, and so is one set higher than WARNING;
* ``SPARSESEARCH_OPTUNA_VERBOSE=1`` in the environment, or ``quiet_optuna(False)``, turns it
  into a no-op (Optuna logs and warns as it normally does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterator

import optuna

__all__ = ["VERBOSE_ENV", "quiet_optuna"]

VERBOSE_ENV = "SPARSESEARCH_OPTUNA_VERBOSE"


def _asked_for_output() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def quiet_optuna(quiet: bool = True, *, level: int = logging.WARNING) -> Iterator[None]:
    """Within the block, Optuna logs only warnings and errors and its ``ExperimentalWarning``
    is ignored; Optuna's previous verbosity is restored on exit. A no-op when ``quiet`` is
    false, when ``SPARSESEARCH_OPTUNA_VERBOSE`` is set (not ``0``), or, for the logging part,
    when the user set Optuna's verbosity to DEBUG. ``level``: the verbosity inside (``search``
    uses ERROR: it logs each failed trial once itself, so Optuna's own warning would repeat it)."""
    if not quiet or _asked_for_output():
        yield
        return
    previous = optuna.logging.get_verbosity()
    lowered = logging.INFO <= previous < level  # Optuna's default is INFO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if lowered:
            optuna.logging.set_verbosity(level)
        try:
            yield
        finally:
            if lowered:
                optuna.logging.set_verbosity(previous)
