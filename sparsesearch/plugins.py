"""The plugin manager: entry-point discovery, clear load errors, the strategy registry.

Plugins are found through ``importlib.metadata`` entry points of group ``sparsesearch``, the same
way for the built-ins (registered in sparsesearch's own pyproject) and for third parties.
``SPARSESEARCH_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import threading
from typing import Any, Callable

import pluggy

from sparsesearch import hookspecs
from sparsesearch.errors import PluginError, StrategyError
from sparsesearch.strategy import Strategy

__all__ = [
    "ENTRY_POINT_GROUP",
    "StrategyInfo",
    "get_plugin_manager",
    "get_strategy",
    "list_strategies",
    "register_plugin",
    "reset_plugins",
]

ENTRY_POINT_GROUP = "sparsesearch"
DISABLE_ENV = "SPARSESEARCH_DISABLE_PLUGINS"

_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_strategies: dict[str, "StrategyInfo"] | None = None


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy and where it came from."""

    name: str
    strategy: Strategy
    plugin: str
    distribution: str

    @property
    def granularity(self) -> str:
        return self.strategy.granularity

    @property
    def requires_data(self) -> bool:
        return bool(self.strategy.requires_data)


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    disabled = _disabled()
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            other = pm.get_plugin(ep.name)
            other_dist = pm._sparsesearch_dists.get(ep.name, "unknown distribution")  # type: ignore[attr-defined]
            raise PluginError(
                f"two plugins named {ep.name!r}: {ep.value!r} from {dist} and "
                f"{getattr(other, '__name__', other)!r} from {other_dist}; rename one entry point"
            )
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist} failed to load ({ep.value}): "
                f"{type(exc).__name__}: {exc}. Set {DISABLE_ENV}={ep.name} to skip it."
            ) from exc
        try:
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - bad hookimpls, the same module registered twice
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist} could not be registered "
                f"({ep.value}): {type(exc).__name__}: {exc}. Set {DISABLE_ENV}={ep.name} to skip it."
            ) from exc
        pm._sparsesearch_dists[ep.name] = dist  # type: ignore[attr-defined]


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with all installed plugins loaded."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            pm.add_hookspecs(hookspecs)
            pm._sparsesearch_dists = {}  # type: ignore[attr-defined]
            _load_entry_points(pm)
            _pm = pm
        return _pm


def reset_plugins() -> None:
    """Forget loaded plugins so the next call rediscovers entry points (tests, notebooks)."""
    global _pm, _strategies
    with _lock:
        _pm = None
        _strategies = None
        importlib.invalidate_caches()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object directly (no entry point), e.g. from a notebook or a test."""
    with _lock:
        pm = get_plugin_manager()
        pm.register(plugin, name=name)
        pm._sparsesearch_dists[pm.get_name(plugin)] = "(registered at run time)"  # type: ignore[attr-defined]
        global _strategies
        _strategies = None


def _plugin_source(pm: pluggy.PluginManager, impl: pluggy.HookImpl) -> tuple[str, str]:
    name = impl.plugin_name
    return name, pm._sparsesearch_dists.get(name, "unknown distribution")  # type: ignore[attr-defined]


def collect(hook_name: str) -> list[tuple[tuple[str, str], tuple[Any, ...]]]:
    """Call a ``register``-style hook on every plugin; return ``(source, args)`` per call."""
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    out: list[tuple[tuple[str, str], tuple[Any, ...]]] = []
    for impl in reversed(hook.get_hookimpls()):
        source = _plugin_source(pm, impl)

        def register(*args: Any, _source: tuple[str, str] = source) -> None:
            out.append((_source, args))

        try:
            impl.function(**({"register": register} if "register" in impl.argnames else {}))
        except Exception as exc:  # noqa: BLE001
            raise PluginError(
                f"plugin {source[0]!r} from {source[1]} raised in {hook_name}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return out


def collect_named(
    hook_name: str, kind: str, existing: Any, pm: pluggy.PluginManager | None = None
) -> dict[str, Callable[..., Any]]:
    """Call a ``register(name, function)`` hook on every plugin (datasets, models).

    A name that is already in ``existing`` or registered twice, a non-callable, or a plugin
    that raises gives one :class:`PluginError` naming the plugin.
    """
    pm = pm or get_plugin_manager()
    registry: dict[str, Callable[..., Any]] = {}
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        plugin = impl.plugin_name

        def register(name: str, function: Callable[..., Any], _plugin: str = plugin) -> None:
            if not isinstance(name, str) or not name or not callable(function):
                raise PluginError(
                    f"plugin {_plugin!r} called register({name!r}, {function!r}): "
                    f"expected a name and a {kind} function"
                )
            if name in existing or name in registry:
                raise PluginError(f"plugin {_plugin!r} registered {kind} {name!r}, which exists")
            registry[name] = function

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - the plugin's fault, say so
            raise PluginError(
                f"plugin {plugin!r} raised in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc
    return registry


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


def _strategy_registry() -> dict[str, StrategyInfo]:
    global _strategies
    with _lock:
        if _strategies is not None:
            return _strategies
        registry: dict[str, StrategyInfo] = {}
        for (plugin, dist), args in collect("sparsesearch_register_strategies"):
            if len(args) != 1 or not isinstance(args[0], Strategy):
                raise PluginError(
                    f"plugin {plugin!r} from {dist} called register({args!r}): expected one "
                    "sparsesearch.Strategy instance"
                )
            strategy = args[0]
            _validate_strategy(strategy, plugin, dist)
            if strategy.name in registry:
                first = registry[strategy.name]
                raise PluginError(
                    f"strategy {strategy.name!r} is registered twice: by plugin "
                    f"{first.plugin!r} ({first.distribution}) and by plugin {plugin!r} ({dist})"
                )
            registry[strategy.name] = StrategyInfo(strategy.name, strategy, plugin, dist)
        _strategies = registry
        return registry


def _validate_strategy(strategy: Strategy, plugin: str, dist: str) -> None:
    where = f"strategy {strategy!r} from plugin {plugin!r} ({dist})"
    if not isinstance(strategy.name, str) or not strategy.name.strip():
        raise PluginError(f"{where} has no name: set the class attribute `name`")
    if strategy.granularity not in ("weight", "channel"):
        raise PluginError(
            f"{where} has granularity={strategy.granularity!r}: use 'weight' or 'channel'"
        )


def list_strategies() -> list[StrategyInfo]:
    """All registered strategies, sorted by name."""
    return sorted(_strategy_registry().values(), key=lambda s: s.name)


def get_strategy(name: str | Strategy) -> StrategyInfo:
    """Look a strategy up by name (a :class:`Strategy` instance is accepted as is)."""
    if isinstance(name, Strategy):
        if name.granularity not in ("weight", "channel"):
            raise StrategyError(
                f"strategy {name!r} has granularity={name.granularity!r}: use 'weight' or 'channel'"
            )
        return StrategyInfo(name.name or type(name).__name__, name, "(instance)", "(instance)")
    registry = _strategy_registry()
    try:
        return registry[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(registry)) or "none installed"
        raise StrategyError(f"unknown strategy {name!r}; known strategies: {known}") from None


def call_observers(hook_name: str, **kwargs: Any) -> list[str]:
    """Call an observer hook on every plugin; return one line per plugin that raised."""
    pm = get_plugin_manager()
    problems: list[str] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as exc:  # noqa: BLE001 - observers must not break a study
            problems.append(f"plugin {impl.plugin_name!r} raised in {hook_name}: {exc!r}")
    return problems


def suggest_strategy_params(strategy: str, trial: Any) -> dict[str, Any]:
    """Merge the ``sparsesearch_suggest_params`` answers of all plugins for ``strategy``."""
    params: dict[str, Any] = {}
    for answer in get_plugin_manager().hook.sparsesearch_suggest_params(
        strategy=strategy, trial=trial
    ):
        if answer:
            params.update(answer)
    return params


Registrar = Callable[..., None]
