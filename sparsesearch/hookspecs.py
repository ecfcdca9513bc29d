"""Hook specifications: the contract between sparsesearch and its plugins.

A plugin is a module (or object) with functions named like the specs below and decorated with
``@sparsesearch.hookimpl``. It is found through an entry point of group ``sparsesearch``::

    [project.entry-points.sparsesearch]
    my-plugin = "my_package.my_module"

Every hook is optional. ``register`` callbacks follow simonw/llm's style: the engine passes a
function, the plugin calls it once per thing it adds. The ``register`` hooks are called once per
process and their registrations kept (``sparsesearch.plugins.register_plugin`` and
``reset_plugins`` make the next lookup call them again).

Hooks are called through pluggy in its order (``tryfirst`` / ``trylast``, the plugin registered
last first, ``wrapper=True`` around the others). An exception raised by an implementation is
reported as a :class:`sparsesearch.errors.PluginFailedError` naming the plugin and its
distribution, the plugin's exception chained; the observers' (``sparsesearch_trial_end``,
``sparsesearch_study_end``) are logged as warnings and ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from sparsesearch.strategy import Strategy

PROJECT_NAME = "sparsesearch"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def sparsesearch_register_strategies(register: Callable[["Strategy"], None]) -> None:
    """Register pruning strategies.

    Called by the plugin manager once, the first time strategies are needed (for
    ``sparsesearch strategies``, ``prune()``, ``search()``). Call ``register(strategy)`` with a
    :class:`sparsesearch.Strategy` instance for each strategy; ``strategy.name`` must be unique
    across all installed plugins.
    """


@hookspec
def sparsesearch_register_datasets(register: Callable[..., None]) -> None:
    """Register dataset names.

    Called by ``sparsesearch.data`` once, the first time a dataset name that is not built in is
    looked up (or the datasets are listed); the registrations are kept.
    Call ``register(name, loader)``, where ``loader(*, seed: int, root: str | None, **options)``
    returns ``(train, val, test)`` torch Datasets (or ``(train, val)``).
    """


@hookspec
def sparsesearch_register_models(register: Callable[..., None]) -> None:
    """Register model names.

    Called by ``sparsesearch.models`` once, the first time a model name that is not in the zoo is
    looked up (or the models are listed); the registrations are kept.
    Call ``register(name, factory)``, where ``factory(**kwargs)`` returns an ``nn.Module``.
    """


@hookspec
def sparsesearch_suggest_params(strategy: str, trial: "optuna.Trial") -> dict[str, Any] | None:
    """Add strategy-specific hyperparameters to the search space.

    Called by ``sparsesearch.search`` in every trial, after the trial's strategy was chosen.
    Return ``None`` when ``strategy`` is not yours; otherwise suggest values with
    ``trial.suggest_*`` (prefix the names with your strategy name) and return them as a dict.
    They reach :meth:`Strategy.score` as ``context.params``. Answers are merged in call order;
    raising, or answering anything but a dict or ``None``, fails the trial with a
    ``PluginFailedError`` naming the plugin.
    """


@hookspec
def sparsesearch_trial_end(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    """Observe a finished trial (COMPLETE, PRUNED or FAIL), e.g. to log it to MLflow.

    Called by ``sparsesearch.search`` after each trial is stored. ``trial.user_attrs`` holds
    ``params``, ``sparsity``, ``strategy``, ``heuristic``. Exceptions are logged (naming the
    plugin) and ignored; the other observers still run.
    """


@hookspec
def sparsesearch_study_end(study: "optuna.Study", result: Any) -> None:
    """Observe the end of a search.

    Called by ``sparsesearch.search`` once, after the best trial was evaluated on test;
    ``result`` is the :class:`sparsesearch.SearchResult`. Exceptions are logged (naming the
    plugin) and ignored; the other observers still run.
    """
