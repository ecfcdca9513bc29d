"""Exceptions raised for user errors. Each message is one line naming the culprit."""

from __future__ import annotations

__all__ = ["SparsesearchError", "PluginError", "StrategyError", "BudgetError"]


class SparsesearchError(ValueError):
    """Base class of sparsesearch's user-facing errors (the CLI prints them and exits 2)."""


class PluginError(SparsesearchError):
    """A plugin failed to load or registered something invalid."""


class StrategyError(SparsesearchError):
    """Unknown strategy, or a strategy returned invalid scores."""


class BudgetError(SparsesearchError):
    """A budget that cannot be met (the message gives the feasible minimum)."""
