"""The plugin manager: entry-point discovery, clear load errors, the strategy registry.

Plugins are found through ``importlib.metadata`` entry points of group ``sparsesearch``, the same
way for the built-ins (registered in sparsesearch's own pyproject) and for third parties.
``SPARSESEARCH_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name.

Everything a plugin runs goes through :class:`SparsesearchPluginManager`, a
``pluggy.PluginManager`` that knows where each plugin came from (:class:`PluginSource`), calls
hooks in pluggy's own order (``tryfirst`` / ``trylast`` / ``wrapper=True`` honoured) and turns a
plugin's exception into a :class:`~sparsesearch.errors.PluginFailedError` that names the plugin
and its distribution, with the plugin's exception chained. The ``register`` hooks are called
once per manager and their registrations cached; registering or unregistering a plugin
forgets the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import os
import re
import sys
import threading
from typing import Any, Callable, Mapping, Sequence

import pluggy

from sparsesearch import hookspecs
from sparsesearch.errors import PluginError, PluginFailedError, SparsesearchError, StrategyError
from sparsesearch.strategy import Strategy

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginSource",
    "SparsesearchPluginManager",
    "StrategyInfo",
    "call_observers",
    "describe_strategy",
    "get_plugin_manager",
    "get_strategy",
    "list_strategies",
    "register_plugin",
    "reset_plugins",
    "suggest_strategy_params",
    "validate_strategy",
]

ENTRY_POINT_GROUP = "sparsesearch"
DISABLE_ENV = "SPARSESEARCH_DISABLE_PLUGINS"
RUNTIME = "(registered at run time)"
UNKNOWN = "unknown distribution"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
GRANULARITIES = ("weight", "channel")

_lock = threading.RLock()
_pm: "SparsesearchPluginManager | None" = None


# --------------------------------------------------------------------------- where plugins come from


@dataclasses.dataclass(frozen=True)
class PluginSource:
    """Where a registered plugin came from: its name and its distribution (name, version)."""

    plugin: str
    distribution: str = UNKNOWN
    version: str | None = None

    def describe(self) -> str:
        """``"distribution foo-plugin 1.0"``, or ``"registered at run time"``."""
        if self.distribution == RUNTIME:
            return "registered at run time"
        if self.distribution == UNKNOWN:
            return UNKNOWN
        version = f" {self.version}" if self.version else ""
        return f"distribution {self.distribution}{version}"

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.describe()})"


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy and where it came from."""

    name: str
    strategy: Strategy
    plugin: str
    distribution: str
    version: str | None = None

    @property
    def granularity(self) -> str:
        return self.strategy.granularity

    @property
    def requires_data(self) -> bool:
        return bool(self.strategy.requires_data)

    @property
    def source(self) -> PluginSource:
        return PluginSource(self.plugin, self.distribution, self.version)


Registration = tuple[PluginSource, tuple[Any, ...]]


# --------------------------------------------------------------------------- the strategy contract


def validate_strategy(
    strategy: Any,
    *,
    where: str | None = None,
    error: type[Exception] = StrategyError,
    require_name: bool = True,
) -> Strategy:
    """Check a strategy's class attributes against the contract; return it, or raise ``error``.

    The one check of ``name``, ``granularity``, ``requires_data``, ``description`` and of
    ``score()`` being implemented, used by the registry (``error=PluginError``, ``where`` the
    plugin), :func:`get_strategy` for plain instances (``require_name=False``: an instance
    passed to ``prune()`` may go without a name) and the conformance kit
    (``sparsesearch.testing``, ``error=StrategyContractError``). The message is one line:
    ``"<where>: <what is wrong>: <how to fix it>"``.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise error(
            f"{prefix}got the class {strategy.__name__}, not an instance: pass "
            f"{strategy.__name__}()"
        )
    if not isinstance(strategy, Strategy):
        raise error(
            f"{prefix}got {type(strategy).__name__}, not a sparsesearch.Strategy: subclass "
            "sparsesearch.Strategy and pass an instance"
        )
    cls = type(strategy).__name__
    name = strategy.name
    if not isinstance(name, str) or (require_name and not name):
        raise error(
            f"{prefix}{cls}.name is {name!r}: set the class attribute `name` to a short unique "
            "string users type, e.g. name = \"my-strategy\""
        )
    if name and not NAME_PATTERN.match(name):
        raise error(
            f"{prefix}{cls}.name is {name!r}: use letters, digits, '-', '_' or '.', starting "
            "with a letter or digit (no spaces or commas: users type it on the command line)"
        )
    label = f"strategy {name or cls!r} ({cls})"
    if strategy.granularity not in GRANULARITIES:
        raise error(
            f"{prefix}{label} has granularity={strategy.granularity!r}: set granularity = "
            "\"weight\" (one score per weight) or \"channel\" (one score per output channel)"
        )
    if not isinstance(strategy.requires_data, bool):
        raise error(
            f"{prefix}{label} has requires_data={strategy.requires_data!r}: set "
            "requires_data = True (score() needs gradients) or False"
        )
    if not isinstance(strategy.description, str):
        raise error(
            f"{prefix}{label} has description={strategy.description!r}: set description to a "
            "one-line string"
        )
    if type(strategy).score is Strategy.score:
        raise error(
            f"{prefix}{label} does not implement score(): define score(self, layer, context) "
            "returning a torch.Tensor of importance scores"
        )
    return strategy


# --------------------------------------------------------------------------- calling hooks


def _source_of(pm: pluggy.PluginManager, plugin_name: str) -> PluginSource:
    if isinstance(pm, SparsesearchPluginManager):
        return pm.source(plugin_name)
    return PluginSource(plugin_name)


def _passes_through(exc: BaseException) -> bool:
    """Exceptions that are control flow, not a plugin's bug (an Optuna ``TrialPruned``)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.TrialPruned)


def run_hook(
    pm: pluggy.PluginManager,
    hook_name: str,
    kwargs: Mapping[str, Any],
    *,
    on_error: Callable[[PluginSource, Exception], None],
    before: Callable[[PluginSource], None] | None = None,
) -> list[tuple[PluginSource, Any]]:
    """Call ``hook_name`` through pluggy, in pluggy's order, one guarded implementation at a time.

    Returns ``(source, result)`` for every implementation that returned, in call order.
    When an implementation raises, ``on_error(source, exc)`` is called inside an ``except``
    block: it may raise (the call stops, with ``exc`` chained) or return (the other plugins
    still run). ``before(source)`` runs before each implementation (``register`` callbacks
    use it to know who is registering). Wrappers (``wrapper=True`` / ``hookwrapper=True``) run
    as pluggy runs them, around all the implementations; a wrapper that raises is reported
    through ``on_error`` too.

    Uses ``PluginManager._hookexec``, the function pluggy's own ``HookCaller`` calls, with the
    hook's implementations each wrapped in a guard, so that ordering, argument selection and
    wrappers are pluggy's.
    """
    caller = getattr(pm.hook, hook_name)
    results: list[tuple[PluginSource, Any]] = []
    raised: list[BaseException] = []  # what on_error raised: passes through pluggy unchanged
    impls = []
    wrappers = []
    for impl in caller.get_hookimpls():
        if impl.wrapper or impl.hookwrapper:
            impls.append(impl)
            wrappers.append(impl)
            continue
        guarded = pluggy.HookImpl(impl.plugin, impl.plugin_name, impl.function, impl.opts)
        guarded.function = _guard(impl.function, _source_of(pm, impl.plugin_name), results,
                                  on_error, before, raised)
        impls.append(guarded)
    try:
        pm._hookexec(hook_name, impls, dict(kwargs), False)
    except Exception as exc:  # noqa: BLE001 - ours from on_error, or a wrapper's failure
        if _passes_through(exc) or any(exc is r for r in raised):
            raise
        names = ", ".join(w.plugin_name for w in wrappers) or "?"
        on_error(PluginSource(names) if len(wrappers) != 1
                 else _source_of(pm, wrappers[0].plugin_name), exc)
    return results


def _guard(
    function: Callable[..., Any],
    source: PluginSource,
    results: list[tuple[PluginSource, Any]],
    on_error: Callable[[PluginSource, Exception], None],
    before: Callable[[PluginSource], None] | None,
    raised: list[BaseException],
) -> Callable[..., Any]:
    def guarded(*args: Any) -> Any:
        if before is not None:
            before(source)
        try:
            result = function(*args)
        except Exception as exc:  # noqa: BLE001 - the plugin's own failure
            if _passes_through(exc):
                raise
            try:
                on_error(source, exc)
            except BaseException as reported:
                raised.append(reported)
                raise
            return None
        results.append((source, result))
        return result

    return guarded


# --------------------------------------------------------------------------- the plugin manager


class SparsesearchPluginManager(pluggy.PluginManager):
    """sparsesearch's ``pluggy.PluginManager``: hookspecs added, plugin sources recorded,
    ``register`` hooks called once and cached, the strategy registry."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}
        self._registrations: dict[str, list[Registration]] = {}
        self._strategies: dict[str, StrategyInfo] | None = None
        self._state_lock = threading.RLock()

    # registration keeps sources and caches in step
    def register(
        self, plugin: Any, name: str | None = None, *, source: PluginSource | None = None
    ) -> str | None:
        registered = super().register(plugin, name)
        if registered is not None:
            with self._state_lock:
                self.sources[registered] = source or PluginSource(registered, RUNTIME)
                self.forget_registrations()
        return registered

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin=plugin, name=name)
        with self._state_lock:
            if name is not None:
                self.sources.pop(name, None)
            self.forget_registrations()
        return removed

    def forget_registrations(self) -> None:
        """Drop the cached ``register`` hook results (the next lookup calls the plugins)."""
        with self._state_lock:
            self._registrations.clear()
            self._strategies = None

    def source(self, plugin_name: str) -> PluginSource:
        return self.sources.get(plugin_name) or PluginSource(plugin_name)

    def load_entry_points(self) -> None:
        """Load and register every entry point of group ``sparsesearch`` not disabled."""
        disabled = _disabled()
        seen: set[tuple[str, str]] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else UNKNOWN
            version = ep.dist.version if ep.dist is not None else None
            source = PluginSource(ep.name, dist, version)
            if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            if ep.name in disabled:
                self.set_blocked(ep.name)
                continue
            if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                other = self.get_plugin(ep.name)
                raise PluginError(
                    f"two plugins named {ep.name!r}: {ep.value!r} from {dist} and "
                    f"{getattr(other, '__name__', other)!r} from "
                    f"{self.source(ep.name).distribution}; rename one entry point"
                )
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist} failed to load ({ep.value}): "
                    f"{type(exc).__name__}: {exc}. Set {DISABLE_ENV}={ep.name} to skip it."
                ) from exc
            try:
                self.register(plugin, name=ep.name, source=source)
            except Exception as exc:  # noqa: BLE001 - bad hookimpls, the same module twice
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist} could not be registered "
                    f"({ep.value}): {type(exc).__name__}: {exc}. Set {DISABLE_ENV}={ep.name} "
                    "to skip it."
                ) from exc

    def collect(self, hook_name: str) -> list[Registration]:
        """The ``register(...)`` calls of every plugin for a ``register``-style hook, cached."""
        with self._state_lock:
            cached = self._registrations.get(hook_name)
            if cached is None:
                cached = _collect(self, hook_name)
                self._registrations[hook_name] = cached
            return list(cached)

    def strategies(self) -> dict[str, StrategyInfo]:
        """The strategy registry ``{name: StrategyInfo}``, built once."""
        with self._state_lock:
            if self._strategies is None:
                self._strategies = _build_registry(self.collect("sparsesearch_register_strategies"))
            return self._strategies


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _collect(pm: pluggy.PluginManager, hook_name: str) -> list[Registration]:
    out: list[Registration] = []
    current: list[PluginSource] = []

    def before(source: PluginSource) -> None:
        current[:] = [source]

    def register(*args: Any) -> None:
        out.append((current[0] if current else PluginSource("?"), args))

    def on_error(source: PluginSource, exc: Exception) -> None:
        raise PluginFailedError(
            f"{source} raised in {hook_name}: {type(exc).__name__}: {exc}",
            plugin=source.plugin, distribution=source.distribution, hook=hook_name,
        ) from exc

    run_hook(pm, hook_name, {"register": register}, on_error=on_error, before=before)
    return out


def _build_registry(registrations: Sequence[Registration]) -> dict[str, StrategyInfo]:
    registry: dict[str, StrategyInfo] = {}
    for source, args in registrations:
        plugin, dist = source.plugin, source.distribution
        if len(args) != 1 or not isinstance(args[0], Strategy):
            raise PluginError(
                f"plugin {plugin!r} from {dist} called register({args!r}): expected one "
                "sparsesearch.Strategy instance"
            )
        strategy = validate_strategy(
            args[0], where=f"plugin {plugin!r} ({source.describe()})", error=PluginError
        )
        if strategy.name in registry:
            first = registry[strategy.name]
            raise PluginError(
                f"strategy {strategy.name!r} is registered twice: by plugin "
                f"{first.plugin!r} ({first.distribution}) and by plugin {plugin!r} ({dist})"
            )
        registry[strategy.name] = StrategyInfo(
            strategy.name, strategy, plugin, dist, source.version
        )
    return registry


def get_plugin_manager() -> SparsesearchPluginManager:
    """The process-wide plugin manager, with all installed plugins loaded."""
    global _pm
    with _lock:
        if _pm is None:
            pm = SparsesearchPluginManager()
            pm.load_entry_points()
            _pm = pm
        return _pm


def reset_plugins() -> None:
    """Forget loaded plugins so the next call rediscovers entry points (tests, notebooks)."""
    global _pm
    with _lock:
        _pm = None
        importlib.invalidate_caches()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object directly (no entry point), e.g. from a notebook or a test.
    Without ``name`` it is named after the module or class (``__name__``, else the class name;
    a number is appended when that name is taken), so messages can name it."""
    with _lock:
        pm = get_plugin_manager()
        if name is None:
            base = getattr(plugin, "__name__", None) or type(plugin).__name__
            name, n = base, 1
            while pm.has_plugin(name):
                n += 1
                name = f"{base}-{n}"
        pm.register(plugin, name=name)


def collect(hook_name: str) -> list[tuple[tuple[str, str], tuple[Any, ...]]]:
    """``((plugin, distribution), args)`` of every ``register(...)`` call of a ``register``-style
    hook, in pluggy's call order; cached by the process-wide manager."""
    pm = get_plugin_manager()
    calls = pm.collect(hook_name) if isinstance(pm, SparsesearchPluginManager) else _collect(
        pm, hook_name
    )
    return [((s.plugin, s.distribution), args) for s, args in calls]


def collect_named(
    hook_name: str, kind: str, existing: Any, pm: pluggy.PluginManager | None = None
) -> dict[str, Callable[..., Any]]:
    """Call a ``register(name, function)`` hook on every plugin (datasets, models).

    The plugins are called once per plugin manager (cached, see
    :meth:`SparsesearchPluginManager.collect`); a plain ``pluggy.PluginManager`` is called
    every time. A name that is already in ``existing`` or registered twice, a non-callable, or
    a plugin that raises gives one :class:`PluginError` naming the plugin. The functions come
    back wrapped: when one raises (a plugin's loader or factory with a bug of its own), the
    caller gets a :class:`PluginFailedError` naming the dataset or model, the plugin and its
    distribution, with the plugin's exception chained; a :class:`SparsesearchError` it raises on
    purpose passes through.
    """
    pm = pm or get_plugin_manager()
    calls = pm.collect(hook_name) if isinstance(pm, SparsesearchPluginManager) else _collect(
        pm, hook_name
    )
    registry: dict[str, Callable[..., Any]] = {}
    for source, args in calls:
        name, function = args if len(args) == 2 else (None, None)
        if not isinstance(name, str) or not name or not callable(function):
            shown = ", ".join(repr(a) for a in args)
            raise PluginError(
                f"plugin {source.plugin!r} called register({shown}): expected a name and a "
                f"{kind} function"
            )
        if name in existing or name in registry:
            raise PluginError(
                f"plugin {source.plugin!r} registered {kind} {name!r}, which exists"
            )
        registry[name] = _blaming(function, kind, name, source)
    return registry


def _blaming(function: Callable[..., Any], kind: str, name: str,
             source: PluginSource) -> Callable[..., Any]:
    """``function``, whose failures are :class:`PluginFailedError` naming ``source``."""

    @functools.wraps(function)  # keeps the signature: callers pass only what it accepts
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SparsesearchError:
            raise
        except Exception as exc:
            raise PluginFailedError(
                f"{kind} {name!r} of {source} failed: {type(exc).__name__}: {exc}",
                plugin=source.plugin, distribution=source.distribution,
            ) from exc

    return call


def import_callable(spec: str, *, kind: str, error: type[Exception]) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (dotted attributes allowed) for a user-given
    ``kind`` ("dataset", "model"); every failure is one ``error`` line naming ``spec``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{kind} {spec!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError or an error inside the module
        raise error(
            f"{kind} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise error(f"{kind} {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise error(f"{kind} {spec!r}: {attr!r} is not callable")
    return obj


# --------------------------------------------------------------------------- strategies


def list_strategies() -> list[StrategyInfo]:
    """All registered strategies, sorted by name."""
    return sorted(get_plugin_manager().strategies().values(), key=lambda s: s.name)


def get_strategy(name: str | Strategy) -> StrategyInfo:
    """Look a strategy up by name (a :class:`Strategy` instance is accepted as is)."""
    if isinstance(name, Strategy):
        validate_strategy(name, require_name=False)
        return StrategyInfo(name.name or type(name).__name__, name, "(instance)", "(instance)")
    registry = get_plugin_manager().strategies()
    try:
        return registry[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(registry)) or "none installed"
        raise StrategyError(f"unknown strategy {name!r}; known strategies: {known}") from None


def strategy_source(strategy: Strategy) -> PluginSource | None:
    """Where ``strategy`` comes from: its registering plugin when it is registered with the
    loaded manager, else the distribution that installed its class's module (or ``None``)."""
    with _lock:
        pm = _pm
    if pm is not None:
        registry = pm._strategies
        for info in (registry or {}).values():
            if info.strategy is strategy:
                return info.source
    module = type(strategy).__module__.partition(".")[0]
    try:
        dists = importlib.metadata.packages_distributions().get(module) or []
    except Exception:  # noqa: BLE001 - broken metadata on sys.path: just don't name one
        dists = []
    if not dists:
        return None
    try:
        version: str | None = importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        version = None
    return PluginSource(module, dists[0], version)


def describe_strategy(strategy: Strategy) -> str:
    """``"strategy 'foo' (distribution foo-plugin 1.0)"``: who to blame for its failures."""
    name = strategy.name or type(strategy).__name__
    source = strategy_source(strategy)
    if source is None:
        where = f"class {type(strategy).__qualname__} in module {type(strategy).__module__}"
    elif source.distribution in (RUNTIME, UNKNOWN):
        where = f"plugin {source.plugin!r}, {source.describe()}"
    else:
        where = source.describe()
    return f"strategy {name!r} ({where})"


def suggest_strategy_params(strategy: str, trial: Any) -> dict[str, Any]:
    """Merge the ``sparsesearch_suggest_params`` answers of all plugins for ``strategy``.

    A plugin that raises, or answers something other than a dict or ``None``, is a
    :class:`PluginFailedError` naming strategy, plugin and distribution (its exception
    chained). Optuna's ``TrialPruned`` passes through.
    """
    hook = "sparsesearch_suggest_params"

    def on_error(source: PluginSource, exc: Exception) -> None:
        raise PluginFailedError(
            f"{source} failed in {hook} for strategy {strategy!r}: {type(exc).__name__}: {exc}",
            strategy=strategy, plugin=source.plugin, distribution=source.distribution,
            hook=hook,
        ) from exc

    params: dict[str, Any] = {}
    before = set(_params_of(trial))
    answers = run_hook(get_plugin_manager(), hook, {"strategy": strategy, "trial": trial},
                       on_error=on_error)
    taken = sorted(n for n in set(_params_of(trial)) - before if _reserved(n))
    def failed(source: PluginSource, what: str) -> PluginFailedError:
        return PluginFailedError(f"{source} {what}", strategy=strategy, plugin=source.plugin,
                                 distribution=source.distribution, hook=hook)

    for source, answer in answers:  # in pluggy's call order: a later answer wins a clash
        if answer is None:
            continue
        if not isinstance(answer, Mapping):
            raise failed(source, f"returned {type(answer).__name__} from {hook} for strategy "
                                 f"{strategy!r}: return a dict of parameters, or None when the "
                                 "strategy is not yours")
        clash = sorted(k for k in answer if _reserved(str(k))) or taken
        if clash:
            own = strategy + "." + str(clash[0]).split(":")[-1]
            raise failed(source, f"suggested {clash[0]!r} in {hook} for strategy {strategy!r}, a "
                                 f"name of sparsesearch's own search space: name it {own!r} "
                                 "('<strategy>.<param>')")
        params.update(answer)
    return params


# the names sparsesearch's own search space suggests (space.py, search.py): a plugin's
# hyperparameter of the same name would clash with them in the trial
RESERVED_PARAMS = frozenset({"strategy", "budget", "lr", "epochs", "optimizer", "weight_decay",
                             "prune_steps", "kd_weight", "kd_temperature"})
RESERVED_PREFIXES = ("density:", "alloc:")


def _reserved(name: str) -> bool:
    return name in RESERVED_PARAMS or name.startswith(RESERVED_PREFIXES)


def _params_of(trial: Any) -> Mapping[str, Any]:
    try:
        return dict(getattr(trial, "params", None) or {})
    except Exception:  # noqa: BLE001 - a trial-like object without params: nothing to compare
        return {}


def call_observers(hook_name: str, **kwargs: Any) -> list[str]:
    """Call an observer hook (``sparsesearch_trial_end``, ``sparsesearch_study_end``) on every
    plugin, through pluggy and in its order; return one line per plugin that raised, naming the
    plugin and its distribution. An observer's exception never stops the others."""
    problems: list[str] = []

    def on_error(source: PluginSource, exc: Exception) -> None:
        problems.append(f"{source} raised in {hook_name}: {type(exc).__name__}: {exc}")

    run_hook(get_plugin_manager(), hook_name, kwargs, on_error=on_error)
    return problems

