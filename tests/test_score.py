"""The score step: gradients accumulated exactly, from every accepted kind of data, on a copy
of the model (which is left untouched), deterministically for a seed."""

from __future__ import annotations

import copy
import sys
import traceback

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsesearch
from sparsesearch.errors import PluginFailedError, SparsesearchError, StrategyError
from sparsesearch.layers import find_layers
from sparsesearch.masks import get_mask, masked_modules
from sparsesearch.score import accumulate_gradients, compute_scores


def _mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3)
    )


def _batches(n: int = 3, size: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _manual_mean_gradients(model, batches):
    work = copy.deepcopy(model).train()
    sums = {n: torch.zeros_like(m.weight) for n, m in work.named_modules() if isinstance(m, nn.Linear)}
    for x, y in batches:
        work.zero_grad()
        nn.functional.cross_entropy(work(x), y).backward()
        for n in sums:
            sums[n] += dict(work.named_modules())[n].weight.grad
    return {n: s / len(batches) for n, s in sums.items()}


def test_gradients_are_the_mean_over_the_first_num_batches():
    model = _mlp()
    batches = _batches(3)
    layers = find_layers(model)
    fields = accumulate_gradients(model, layers, batches, num_batches=2)
    assert fields["num_batches"] == 2
    expected = _manual_mean_gradients(model, batches[:2])
    for name in ("0", "4"):
        assert torch.allclose(fields["gradients"][name], expected[name], atol=1e-6)
        assert fields["gradient_squares"][name].shape == expected[name].shape
        assert fields["taylor"][name].shape == (expected[name].shape[0],)
        assert bool((fields["gradient_squares"][name] >= 0).all())
    # fewer batches than asked: uses what there is
    assert accumulate_gradients(model, layers, batches, num_batches=10)["num_batches"] == 3


def _same(a, b):
    return all(torch.allclose(a["gradients"][n], b["gradients"][n], atol=1e-6) for n in a["gradients"])


def test_every_kind_of_batch_iterable_gives_the_same_gradients():
    model = _mlp()
    layers = find_layers(model)
    two = _batches(2)  # a list of exactly two batches is batches, not (train, val) splits
    reference = accumulate_gradients(model, layers, two, num_batches=8)
    assert reference["num_batches"] == 2
    x = torch.cat([b[0] for b in two])
    y = torch.cat([b[1] for b in two])
    forms = {
        "tuple": tuple(two),
        "generator": (b for b in two),
        "lists": [[bx, by] for bx, by in two],
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=6, shuffle=False),
    }
    for label, data in forms.items():
        got = accumulate_gradients(model, layers, data, num_batches=8)
        assert got["num_batches"] == 2, label
        assert _same(got, reference), label
    # a single (x, y) pair is one batch
    one = accumulate_gradients(model, layers, two[0], num_batches=8)
    assert one["num_batches"] == 1
    assert _same(one, accumulate_gradients(model, layers, [two[0]]))


def test_torch_datasets_are_batched_with_a_seeded_shuffle():
    pytest.importorskip("sparsesearch.train")
    model = _mlp()
    layers = find_layers(model)
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g))
    val = TensorDataset(torch.randn(10, 5), torch.randint(0, 3, (10,)))
    a = accumulate_gradients(model, layers, train, num_batches=2, batch_size=8, seed=3)
    b = accumulate_gradients(model, layers, train, num_batches=2, batch_size=8, seed=3)
    c = accumulate_gradients(model, layers, (train, val), num_batches=2, batch_size=8, seed=3)
    d = accumulate_gradients(model, layers, train, num_batches=2, batch_size=8, seed=4)
    assert a["num_batches"] == 2
    assert _same(a, b) and _same(a, c)
    assert not _same(a, d)


def test_scoring_leaves_model_and_global_rng_untouched():
    model = _mlp(dropout=0.5)
    sparsesearch.prune(model, "magnitude", 0.5)
    model.eval()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    layers = find_layers(model)
    compute_scores(model, layers, sparsesearch.get_strategy("gradient").strategy, data=_batches(2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # weights, masks and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())


def test_gradient_scores_are_deterministic_with_dropout():
    model = _mlp(dropout=0.5)
    layers = find_layers(model)
    strategy = sparsesearch.get_strategy("gradient").strategy
    a = compute_scores(model, layers, strategy, data=_batches(2), seed=5)
    torch.manual_seed(12345)  # the caller's RNG state does not matter
    b = compute_scores(model, layers, strategy, data=_batches(2), seed=5)
    c = compute_scores(model, layers, strategy, data=_batches(2), seed=6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_scores_have_the_right_shapes_on_the_cpu():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3))
    layers = find_layers(model)
    for name, shape0 in (("magnitude", None), ("l1-filter", "channel")):
        scores = compute_scores(model, layers, sparsesearch.get_strategy(name).strategy)
        for layer in layers:
            s = scores[layer.name]
            assert s.device.type == "cpu"
            expected = (layer.out_channels,) if shape0 else tuple(layer.weight.shape)
            assert tuple(s.shape) == expected


def test_gradients_are_taken_at_the_effective_weights():
    model = _mlp()
    sparsesearch.prune(model, "magnitude", 0.5)
    mask = get_mask(model[0]).clone()
    sparsesearch.prune(model, "gradient", 0.7, data=_batches(2))
    # the magnitude zeros are still pruned, and exactly round(0.7 n) are pruned now
    assert bool(((mask == 0) <= (model[0].weight == 0)).all())
    assert int((model[0].weight == 0).sum()) == round(0.7 * 40)


@pytest.mark.parametrize(
    "data, match",
    [
        (42, "data must be"),
        ([], "no training batches"),
        ([(torch.randn(2, 5), torch.tensor([0, 1]), torch.zeros(2))], "batch 0"),
        ([torch.randn(2, 5)], "batch 0"),
    ],
)
def test_bad_data(data, match):
    model = _mlp()
    with pytest.raises(SparsesearchError, match=match):
        sparsesearch.prune(model, "gradient", 0.5, data=data)


def test_bad_num_batches():
    with pytest.raises(SparsesearchError, match="num_batches"):
        sparsesearch.prune(_mlp(), "gradient", 0.5, data=_batches(1), num_batches=0)


def test_non_finite_loss():
    x, y = _batches(1)[0]
    with pytest.raises(SparsesearchError, match="non-finite loss"):
        sparsesearch.prune(_mlp(), "gradient", 0.5, data=[(x * float("nan"), y)])


# --------------------------------------------------------------------------- a plugin's own bug

FOO_PLUGIN = '''
import torch
import sparsesearch


class Foo(sparsesearch.Strategy):
    name = "foo"
    description = "a strategy with a bug (a test plugin)"

    def score(self, layer, context):
        if layer.name in context.params.get("foo.broken", ("fc1", "1")):
            return {}["1"]  # the plugin's bug: KeyError: '1'
        if context.params.get("foo.nan"):
            return torch.full_like(layer.weight, float("nan"))
        return layer.weight.abs()


@sparsesearch.hookimpl
def sparsesearch_register_strategies(register):
    register(Foo())
'''


@pytest.fixture
def foo_plugin(monkeypatch, tmp_path):
    """``foo`` from distribution ``foo-plugin`` 1.0, installed as a real entry point."""
    from sparsesearch import plugins

    info = tmp_path / "foo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: foo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sparsesearch]\nfoo = ssplug_foo\n")
    (tmp_path / "ssplug_foo.py").write_text(FOO_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset_plugins()
    yield tmp_path / "ssplug_foo.py"
    plugins.reset_plugins()
    sys.modules.pop("ssplug_foo", None)


class _FC(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


FOO_MESSAGE = "strategy 'foo' (distribution foo-plugin 1.0) failed on layer 'fc1': KeyError: '1'"


def test_a_plugins_exception_is_a_strategy_error_naming_strategy_layer_and_distribution(foo_plugin):
    torch.manual_seed(0)
    model = _FC()
    with pytest.raises(StrategyError) as err:
        sparsesearch.prune(model, "foo", 0.5)
    assert str(err.value) == FOO_MESSAGE
    assert isinstance(err.value, PluginFailedError)
    assert (err.value.strategy, err.value.layer) == ("foo", "fc1")
    assert (err.value.plugin, err.value.distribution) == ("foo", "foo-plugin")
    # the plugin's own exception is chained, with its traceback down to the plugin's line
    cause = err.value.__cause__
    assert isinstance(cause, KeyError) and cause.args == ("1",)
    frames = traceback.extract_tb(cause.__traceback__)
    assert frames[-1].filename == str(foo_plugin) and "{}[\"1\"]" in frames[-1].line
    assert not masked_modules(model)  # nothing half-pruned


def test_bad_scores_from_a_plugin_name_its_distribution(foo_plugin):
    with pytest.raises(StrategyError) as err:
        sparsesearch.prune(_FC(), "foo", 0.5, params={"foo.broken": (), "foo.nan": True})
    assert str(err.value).startswith(
        "strategy 'foo' (distribution foo-plugin 1.0) failed on layer 'fc1': score() returned "
        "non-finite scores (40 NaN, 0 infinite of 40)"
    )


def test_a_plain_strategy_instance_is_named_by_its_class():
    class Crashing(sparsesearch.Strategy):
        name = "crashing"

        def score(self, layer, context):
            raise ZeroDivisionError("oops")

    with pytest.raises(StrategyError) as err:
        sparsesearch.prune(_FC(), Crashing(), 0.5)
    message = str(err.value)
    assert message.startswith("strategy 'crashing' (class ")
    assert "Crashing in module " in message
    assert message.endswith("failed on layer 'fc1': ZeroDivisionError: oops")
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_a_plugin_calling_sys_exit_is_a_plugin_failure_not_the_end_of_the_process():
    class Exiting(sparsesearch.Strategy):
        name = "exiting"

        def score(self, layer, context):
            sys.exit(3)

    with pytest.raises(PluginFailedError, match=r"failed on layer 'fc1': it called sys.exit\(3\)"):
        sparsesearch.prune(_FC(), Exiting(), 0.5)


def test_a_failed_trial_names_strategy_layer_and_distribution(foo_plugin, tmp_path):
    import optuna
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randn(n, 5, generator=gen)
        return TensorDataset(x, (x[:, 0] > 0).long())

    finished = []
    with pytest.raises(SparsesearchError, match="no COMPLETE trial"):
        sparsesearch.search(
            _FC(), (split(64), split(32), split(32)), budget=0.6, strategies=["foo"],
            n_trials=1, runs_dir=tmp_path / "runs", heuristics=(), trained=True, pruner="none",
            storage=optuna.storages.InMemoryStorage(), space={"epochs": 1, "batch_size": 32, "allocation": "layers"},
            callbacks=[lambda study, trial: finished.append(trial)],
        )
    (trial,) = finished
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == f"PluginFailedError: {FOO_MESSAGE}"
    stored = trial.user_attrs["traceback"]
    assert str(foo_plugin) in stored and "KeyError: '1'" in stored


def test_the_cli_reports_a_plugins_bug_as_the_plugins(foo_plugin, tmp_path, capsys):
    from sparsesearch import cli

    study = tmp_path / "foo.toml"
    study.write_text(
        '[study]\nname = "foo-bug"\nn_trials = 1\nseed = 0\n'
        '[model]\nname = "digits-mlp"\n[data]\nname = "digits"\n[budget]\nfraction = 0.3\n'
        '[search]\nstrategies = ["foo"]\nheuristics = ["global"]\n'
        '[space]\nepochs = 1\nheuristic_lrs = [0.1]\n[dense]\nepochs = 1\n'
    )
    # digits-mlp's first layer is "1": wherever it is scored (before the trials or in one), the
    # user sees the plugin's failure, never an internal error
    code = cli.main(["run", str(study), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                     "--no-report"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert FOO_MESSAGE.replace("'fc1'", "'1'") in err, err
