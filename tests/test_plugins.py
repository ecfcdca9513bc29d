"""The plugin registry: built-ins through entry points, a throwaway third-party distribution,
clear load errors, duplicate names, and SPARSESEARCH_DISABLE_PLUGINS."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch import plugins
from sparsesearch.errors import PluginError, StrategyError

BUILTINS = {
    # name: (granularity, requires_data)
    "magnitude": ("weight", False),
    "random": ("weight", False),
    "l1-filter": ("channel", False),
    "gradient": ("weight", True),
}


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Every test starts from, and leaves behind, the normal registry."""
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset_plugins()
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("ssplug_") or name == "fifth_strategy":
            del sys.modules[name]
    plugins.reset_plugins()


def write_distribution(
    root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """A minimal installed distribution in ``root``: ``<dist>-0.1.dist-info`` plus modules."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[sparsesearch]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


FIFTH = """
    import torch
    import sparsesearch


    class Fifth(sparsesearch.Strategy):
        name = "fifth"
        granularity = "weight"
        description = "prunes the largest weights (a test plugin)"

        def score(self, layer, context):
            return -layer.weight.abs()


    @sparsesearch.hookimpl
    def sparsesearch_register_strategies(register):
        register(Fifth())
"""


def install(monkeypatch, tmp_path, dist, entry_points, modules):
    write_distribution(tmp_path, dist, entry_points, modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset_plugins()


def test_builtin_strategies_come_from_the_sparsesearch_distribution():
    infos = {info.name: info for info in sparsesearch.list_strategies()}
    ours = {name for name, info in infos.items() if info.distribution == "sparsesearch"}
    assert ours == set(BUILTINS)
    for name, (granularity, requires_data) in BUILTINS.items():
        info = infos[name]
        assert info.plugin == name  # the entry-point name
        assert info.granularity == granularity
        assert info.requires_data is requires_data
        assert info.strategy.name == name
        assert info.strategy.description
        assert type(info.strategy).__module__.startswith("sparsesearch_builtin.")
    names = [info.name for info in sparsesearch.list_strategies()]
    assert names == sorted(names)
    assert sparsesearch.get_strategy("l1-filter") is infos["l1-filter"]


def test_a_third_party_distribution_adds_a_fifth_strategy(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, "fifth-strategy", {"fifth": "fifth_strategy"}, {"fifth_strategy": FIFTH})
    infos = {info.name: info for info in sparsesearch.list_strategies()}
    assert set(BUILTINS) | {"fifth"} <= set(infos)
    fifth = infos["fifth"]
    assert fifth.distribution == "fifth-strategy"
    assert fifth.plugin == "fifth"
    assert fifth.granularity == "weight" and not fifth.requires_data
    assert infos["magnitude"].distribution == "sparsesearch"

    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    weights = layer.weight.detach().clone()
    sparsesearch.prune(layer, "fifth", 0.4)
    pruned = layer.weight.detach() == 0
    assert int(pruned.sum()) == 12
    # the plugin's score was used: the 12 *largest* |w| are gone
    largest = torch.topk(weights.abs().flatten(), 12).indices
    assert set(torch.nonzero(pruned.flatten()).flatten().tolist()) == set(largest.tolist())


def test_after_reset_the_throwaway_distribution_is_gone(monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        install(m, tmp_path, "fifth-strategy", {"fifth": "ssplug_gone"}, {"ssplug_gone": FIFTH})
        assert "fifth" in {i.name for i in sparsesearch.list_strategies()}
    plugins.reset_plugins()
    assert "fifth" not in {i.name for i in sparsesearch.list_strategies()}


def test_a_plugin_that_fails_to_import_names_plugin_and_distribution(monkeypatch, tmp_path):
    broken = "import ssplug_not_installed_anywhere  # ImportError\n"
    install(monkeypatch, tmp_path, "broken-dist", {"broken-one": "ssplug_broken"}, {"ssplug_broken": broken})
    with pytest.raises(PluginError) as err:
        sparsesearch.list_strategies()
    message = str(err.value)
    assert "'broken-one'" in message
    assert "broken-dist" in message
    assert "ssplug_not_installed_anywhere" in message
    assert "SPARSESEARCH_DISABLE_PLUGINS=broken-one" in message
    assert isinstance(err.value.__cause__, ImportError)
    # the advice works: disabling it loads the rest
    monkeypatch.setenv(plugins.DISABLE_ENV, "broken-one")
    plugins.reset_plugins()
    assert set(BUILTINS) <= {i.name for i in sparsesearch.list_strategies()}


def test_two_strategies_with_the_same_name_name_both_sources(monkeypatch, tmp_path):
    clash = FIFTH.replace('name = "fifth"', 'name = "magnitude"')
    install(monkeypatch, tmp_path, "clash-dist", {"clasher": "ssplug_clash"}, {"ssplug_clash": clash})
    with pytest.raises(PluginError) as err:
        sparsesearch.list_strategies()
    message = str(err.value)
    assert "'magnitude'" in message
    assert "'clasher'" in message and "clash-dist" in message
    assert "sparsesearch)" in message  # the built-in's distribution
    assert "twice" in message


def test_two_entry_points_with_the_same_name(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, "twin-dist", {"magnitude": "ssplug_twin"}, {"ssplug_twin": FIFTH})
    with pytest.raises(PluginError, match="two plugins named 'magnitude'") as err:
        sparsesearch.list_strategies()
    message = str(err.value)
    assert "twin-dist" in message and "from sparsesearch" in message
    assert "ssplug_twin" in message and "sparsesearch_builtin.magnitude" in message


def test_a_plugin_registering_a_bad_strategy(monkeypatch, tmp_path):
    bad = FIFTH.replace('granularity = "weight"', 'granularity = "filters"')
    install(monkeypatch, tmp_path, "bad-dist", {"bad": "ssplug_bad"}, {"ssplug_bad": bad})
    with pytest.raises(PluginError) as err:
        sparsesearch.list_strategies()
    assert "granularity='filters'" in str(err.value)
    assert "'bad'" in str(err.value) and "bad-dist" in str(err.value)


def test_a_plugin_with_a_misspelled_hook_argument(monkeypatch, tmp_path):
    wrong = FIFTH.replace(
        "def sparsesearch_register_strategies(register):\n        register(Fifth())",
        "def sparsesearch_register_strategies(registr):\n        registr(Fifth())",
    )
    install(monkeypatch, tmp_path, "typo-dist", {"typo": "ssplug_typo"}, {"ssplug_typo": wrong})
    with pytest.raises(PluginError, match="'typo'.*typo-dist"):
        sparsesearch.list_strategies()


def test_disable_plugins_environment_variable(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, " random , gradient ")
    plugins.reset_plugins()
    names = {info.name for info in sparsesearch.list_strategies()}
    assert {"magnitude", "l1-filter"} <= names
    assert not names & {"random", "gradient"}
    with pytest.raises(StrategyError, match="unknown strategy 'random'"):
        sparsesearch.get_strategy("random")
    monkeypatch.delenv(plugins.DISABLE_ENV)
    plugins.reset_plugins()
    assert set(BUILTINS) <= {info.name for info in sparsesearch.list_strategies()}


def test_register_plugin_at_run_time():
    class Ones(sparsesearch.Strategy):
        name = "ones-at-runtime"

        def score(self, layer, context):
            return torch.ones_like(layer.weight)

    class Plugin:
        @sparsesearch.hookimpl
        def sparsesearch_register_strategies(self, register):
            register(Ones())

    plugins.register_plugin(Plugin(), name="runtime-plugin")
    info = sparsesearch.get_strategy("ones-at-runtime")
    assert info.plugin == "runtime-plugin"
    assert info.distribution == "(registered at run time)"
    layer = nn.Linear(3, 2)
    sparsesearch.prune(layer, "ones-at-runtime", 0.5)
    # all ties: lowest flat indices go first
    assert (layer.weight.detach().flatten() == 0).tolist() == [True, True, True, False, False, False]


# --------------------------------------------------------------------------- the plugin manager


def test_the_plugin_manager_is_a_pluggy_manager_that_knows_where_plugins_come_from():
    import pluggy

    pm = plugins.get_plugin_manager()
    assert isinstance(pm, plugins.SparsesearchPluginManager)
    assert isinstance(pm, pluggy.PluginManager)
    source = pm.source("magnitude")
    assert (source.plugin, source.distribution) == ("magnitude", "sparsesearch")
    assert source.version == importlib.metadata.version("sparsesearch")
    assert str(source) == f"plugin 'magnitude' (distribution sparsesearch {source.version})"
    assert plugins.get_strategy("magnitude").version == source.version
    plugins.register_plugin(type("Nothing", (), {})(), name="nothing")
    assert pm.source("nothing").describe() == "registered at run time"
    pm.unregister(name="nothing")
    assert "nothing" not in pm.sources


class _Counting:
    """Registers one dataset and one model, and counts how often pluggy calls it."""

    def __init__(self):
        self.calls = {"datasets": 0, "models": 0}

    @sparsesearch.hookimpl
    def sparsesearch_register_datasets(self, register):
        self.calls["datasets"] += 1
        register("counted-data", lambda seed=0: None)

    @sparsesearch.hookimpl
    def sparsesearch_register_models(self, register):
        self.calls["models"] += 1
        register("counted-model", lambda **kw: nn.Linear(2, 2))


def test_register_hooks_are_called_once_and_again_after_a_new_plugin():
    from sparsesearch.data import list_datasets
    from sparsesearch.models import build_model, list_models

    counting = _Counting()
    plugins.register_plugin(counting, name="counting")
    for _ in range(3):
        assert "counted-data" in list_datasets()
        assert "counted-model" in list_models()
        assert isinstance(build_model("counted-model"), nn.Linear)
    assert counting.calls == {"datasets": 1, "models": 1}
    # a plugin registered later is seen: the cache is dropped, every plugin is asked again
    plugins.register_plugin(type("Late", (), {})(), name="late")
    assert "counted-model" in list_models()
    assert counting.calls["models"] == 2


def test_a_raising_register_hook_names_plugin_and_distribution(monkeypatch, tmp_path):
    raising = """
        import sparsesearch

        @sparsesearch.hookimpl
        def sparsesearch_register_models(register):
            raise RuntimeError("no GPU here")
    """
    install(monkeypatch, tmp_path, "raising-dist", {"raiser": "ssplug_raiser"}, {"ssplug_raiser": raising})
    from sparsesearch.models import list_models

    with pytest.raises(PluginError) as err:
        list_models()
    assert str(err.value) == (
        "plugin 'raiser' (distribution raising-dist 0.1) raised in sparsesearch_register_models: "
        "RuntimeError: no GPU here"
    )
    assert isinstance(err.value.__cause__, RuntimeError)


BUGGY_FACTORIES = """
    import sparsesearch

    def broken_digits(seed=0):
        return {}["train"]          # a bug of the plugin's own

    def broken_model(num_classes=10):
        raise TypeError("unsupported operand")  # inside the body, not a bad argument

    @sparsesearch.hookimpl
    def sparsesearch_register_datasets(register):
        register("broken-digits", broken_digits)

    @sparsesearch.hookimpl
    def sparsesearch_register_models(register):
        register("broken-model", broken_model)
"""


def test_a_plugins_loader_or_factory_that_raises_is_blamed_on_the_plugin(monkeypatch, tmp_path):
    from sparsesearch.data import load_dataset
    from sparsesearch.errors import PluginFailedError
    from sparsesearch.models import build_model

    install(monkeypatch, tmp_path, "buggy-factories", {"buggy": "ssplug_buggy"},
            {"ssplug_buggy": BUGGY_FACTORIES})
    with pytest.raises(PluginFailedError) as err:
        load_dataset("broken-digits")
    assert str(err.value) == ("dataset 'broken-digits' of plugin 'buggy' (distribution "
                              "buggy-factories 0.1) failed: KeyError: 'train'")
    assert isinstance(err.value.__cause__, KeyError) and err.value.distribution == "buggy-factories"
    with pytest.raises(PluginFailedError, match="model 'broken-model' of plugin 'buggy'.*TypeError"):
        build_model("broken-model", num_classes=10)


def test_the_cli_gives_one_line_and_exit_2_for_a_plugins_broken_dataset(monkeypatch, tmp_path):
    import subprocess

    write_distribution(tmp_path / "site", "buggy-factories", {"buggy": "ssplug_buggy"},
                       {"ssplug_buggy": BUGGY_FACTORIES})
    (tmp_path / "s.toml").write_text('[model]\nname = "digits-mlp"\n[data]\nname = "broken-digits"\n'
                                     '[budget]\nfraction = 0.3\n')
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-m", "sparsesearch", "run", "s.toml", "--no-report"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    assert "dataset 'broken-digits' of plugin 'buggy' (distribution buggy-factories 0.1)" in out.stderr


RAISING_STRATEGY = """
    import sparsesearch


    class Raiser(sparsesearch.Strategy):
        name = "raiser"

        def score(self, layer, context):
            return {}[layer.name]  # the plugin's own bug


    @sparsesearch.hookimpl
    def sparsesearch_register_strategies(register):
        register(Raiser())
"""


def test_a_study_whose_trials_all_fail_in_a_plugin_names_it_and_debug_shows_its_frame(tmp_path):
    import subprocess

    write_distribution(tmp_path / "site", "raiser-dist", {"raiser": "ssplug_raiser_strategy"},
                       {"ssplug_raiser_strategy": RAISING_STRATEGY})
    (tmp_path / "s.toml").write_text(
        '[study]\nn_trials = 2\n[model]\nname = "digits-mlp"\n[data]\nname = "digits"\n'
        '[budget]\nfraction = 0.3\n[search]\nstrategies = ["raiser"]\nheuristics = ["uniform"]\n'
        '[space]\nepochs = 1\n[compute]\nepochs = 4\nfinalists = 0\n[dense]\nepochs = 2\n')
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-m", "sparsesearch", "--debug", "run", "s.toml", "--no-report"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "has no COMPLETE trial: 2 of 2 trials failed, all with:" in last
    assert "strategy 'raiser' (distribution raiser-dist 0.1) failed on layer" in last
    assert "internal error" not in out.stderr
    assert "the traceback stored with trial #0:" in out.stderr
    assert "ssplug_raiser_strategy.py" in out.stderr  # the plugin's own frame


def test_a_plugin_registered_at_run_time_is_named_after_its_class():
    class Namer:
        @sparsesearch.hookimpl
        def sparsesearch_register_models(self, register):
            register("namer-model", lambda num_classes=10: nn.Linear(64, num_classes))

    plugins.register_plugin(Namer())
    plugins.register_plugin(Namer())  # a second one of the class
    names = [name for name, _ in plugins.get_plugin_manager().list_name_plugin()]
    assert "Namer" in names and "Namer-2" in names


class _Observer:
    def __init__(self, log, label, fail=False):
        self.log, self.label, self.fail = log, label, fail

    def _observe(self, trial):
        self.log.append((self.label, trial))
        if self.fail:
            raise ValueError(f"{self.label} is broken")


def _observer(log, label, *, fail=False, **opts):
    class Plugin(_Observer):
        @sparsesearch.hookimpl(**opts)
        def sparsesearch_trial_end(self, trial):
            self._observe(trial)

    return Plugin(log, label, fail)


def test_observers_run_in_pluggys_order_and_a_failure_names_its_plugin():
    log: list = []
    # registration order a, first, b, last: pluggy calls tryfirst, then later-registered first,
    # then trylast
    plugins.register_plugin(_observer(log, "a"), name="obs-a")
    plugins.register_plugin(_observer(log, "last", trylast=True), name="obs-last")
    plugins.register_plugin(_observer(log, "b", fail=True), name="obs-b")
    plugins.register_plugin(_observer(log, "first", tryfirst=True), name="obs-first")
    problems = plugins.call_observers("sparsesearch_trial_end", study="S", trial="T")
    assert [label for label, _ in log] == ["first", "b", "a", "last"]
    assert all(trial == "T" for _, trial in log)
    # the raising observer is reported, by name, and did not stop the ones after it
    assert problems == [
        "plugin 'obs-b' (registered at run time) raised in sparsesearch_trial_end: "
        "ValueError: b is broken"
    ]


def test_a_wrapper_observer_wraps_the_others():
    log: list = []

    class Timing:
        @sparsesearch.hookimpl(wrapper=True)
        def sparsesearch_study_end(self, study, result):
            log.append("before")
            outcome = yield
            log.append(("after", outcome))
            return outcome

    class Plain:
        @sparsesearch.hookimpl
        def sparsesearch_study_end(self, result):
            log.append(("plain", result))
            return "seen"

    plugins.register_plugin(Timing(), name="timing")
    plugins.register_plugin(Plain(), name="plain")
    assert plugins.call_observers("sparsesearch_study_end", study="S", result="R") == []
    assert log == ["before", ("plain", "R"), ("after", ["seen"])]


def test_a_raising_wrapper_is_reported_too():
    class Broken:
        @sparsesearch.hookimpl(wrapper=True)
        def sparsesearch_trial_end(self, trial):
            yield
            raise RuntimeError("wrapper bug")

    plugins.register_plugin(Broken(), name="broken-wrapper")
    assert plugins.call_observers("sparsesearch_trial_end", study="S", trial="T") == [
        "plugin 'broken-wrapper' (registered at run time) raised in sparsesearch_trial_end: "
        "RuntimeError: wrapper bug"
    ]


def test_suggest_params_failures_name_the_plugin():
    import optuna

    class Raising:
        @sparsesearch.hookimpl
        def sparsesearch_suggest_params(self, strategy, trial):
            return {"x": 1}[strategy]

    class Merged:
        @sparsesearch.hookimpl(tryfirst=True)
        def sparsesearch_suggest_params(self, strategy):
            return {"merged.p": 2} if strategy == "magnitude" else None

    plugins.register_plugin(Merged(), name="merged")
    trial = optuna.create_study().ask()
    assert plugins.suggest_strategy_params("magnitude", trial) == {"merged.p": 2}
    plugins.register_plugin(Raising(), name="raising")
    with pytest.raises(StrategyError) as err:
        plugins.suggest_strategy_params("magnitude", trial)
    assert str(err.value) == (
        "plugin 'raising' (registered at run time) failed in sparsesearch_suggest_params for "
        "strategy 'magnitude': KeyError: 'magnitude'"
    )
    assert isinstance(err.value, PluginError) and isinstance(err.value.__cause__, KeyError)


@pytest.mark.parametrize("name", ["lr", "density:fc1", "alloc:temperature"])
def test_suggest_params_may_not_take_a_name_of_sparsesearchs_own_space(name):
    import optuna

    class Clashing:
        @sparsesearch.hookimpl
        def sparsesearch_suggest_params(self, strategy, trial):
            return {name: trial.suggest_float(name, 0.5, 0.6)}

    plugins.register_plugin(Clashing(), name="clashing")
    trial = optuna.create_study().ask()
    with pytest.raises(StrategyError) as err:
        plugins.suggest_strategy_params("magnitude", trial)
    assert str(err.value).startswith(
        f"plugin 'clashing' (registered at run time) suggested {name!r} in "
        "sparsesearch_suggest_params for strategy 'magnitude', a name of sparsesearch's own search space")


def test_suggest_params_must_answer_a_dict():
    import optuna

    class Listing:
        @sparsesearch.hookimpl
        def sparsesearch_suggest_params(self, strategy, trial):
            return [("p", 1)]

    plugins.register_plugin(Listing(), name="listing")
    with pytest.raises(StrategyError, match="plugin 'listing' .*returned list"):
        plugins.suggest_strategy_params("magnitude", optuna.create_study().ask())
