"""Exceptions raised for user errors. Each message is one line naming the culprit."""

from __future__ import annotations

import difflib

__all__ = ["SparsesearchError", "PluginError", "StrategyError", "BudgetError", "PluginFailedError",
           "NoCompleteTrialError", "did_you_mean"]


def did_you_mean(key: str, valid: list[str], *, cutoff: float = 0.6) -> str:
    """The end of an "unknown key" message: ``; did you mean 'x'?`` naming the closest valid
    key, else ``; valid keys: a, b, c``."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=cutoff)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(valid)}"


class SparsesearchError(ValueError):
    """Base class of sparsesearch's user-facing errors (the CLI prints them and exits 2)."""


class PluginError(SparsesearchError):
    """A plugin failed to load or registered something invalid."""


class StrategyError(SparsesearchError):
    """Unknown strategy, or a strategy returned invalid scores."""


class BudgetError(SparsesearchError):
    """A budget that cannot be met (the message gives the feasible minimum)."""


class NoCompleteTrialError(SparsesearchError):
    """A study has no COMPLETE trial to choose. Where trials failed, the message gives their
    most common ``fail_reason`` (a plugin's failure names the plugin), ``trial`` is the number
    of the first failed trial and ``trial_traceback`` the traceback stored with it (the CLI
    prints it with ``--debug``)."""

    def __init__(self, message: str, *, trial: int | None = None,
                 trial_traceback: str | None = None) -> None:
        super().__init__(message)
        self.trial = trial
        self.trial_traceback = trial_traceback

    def __reduce__(self):  # keep the fields across pickling (worker processes)
        return (self.__class__, self.args, self.__dict__)


class PluginFailedError(PluginError, StrategyError):
    """A plugin's own code failed: a strategy's ``score()`` raised or returned invalid scores,
    or a hook implementation raised. The message names the strategy (and layer) or hook, the
    plugin and its distribution; ``__cause__`` is the plugin's exception, with its traceback.
    It is both a :class:`PluginError` and a :class:`StrategyError`.
    """

    def __init__(
        self,
        message: str,
        *,
        strategy: str | None = None,
        layer: str | None = None,
        plugin: str | None = None,
        distribution: str | None = None,
        hook: str | None = None,
    ) -> None:
        super().__init__(message)
        self.strategy = strategy
        self.layer = layer
        self.plugin = plugin
        self.distribution = distribution
        self.hook = hook

    def __reduce__(self):  # keep the fields across pickling (worker processes)
        return (self.__class__, self.args, self.__dict__)
