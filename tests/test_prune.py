"""prune(): bad input gives one clear error (and leaves the model alone), and the global scope
matches torch.nn.utils.prune.global_unstructured."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsesearch
from sparsesearch import plugins
from sparsesearch.errors import SparsesearchError, StrategyError
from sparsesearch.masks import masked_modules


@pytest.fixture
def registry():
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def _convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 4),
    )


def _assert_untouched(model: nn.Module, reference: nn.Module) -> None:
    assert not masked_modules(model)
    for (n, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), n


def test_unknown_strategy_lists_known_ones():
    model = _mlp()
    with pytest.raises(StrategyError) as err:
        sparsesearch.prune(model, "magnitud", 0.5)
    message = str(err.value)
    assert "'magnitud'" in message
    for name in ("magnitude", "random", "l1-filter", "gradient"):
        assert name in message
    assert not masked_modules(model)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_sparsity_outside_zero_one(bad):
    model = _mlp()
    reference = copy.deepcopy(model)
    with pytest.raises(SparsesearchError):
        sparsesearch.prune(model, "magnitude", bad)
    _assert_untouched(model, reference)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_sparsity_outside_zero_one_in_a_dict_names_the_layer(bad):
    model = _mlp()
    with pytest.raises(SparsesearchError, match="'2'"):
        sparsesearch.prune(model, "magnitude", {"0": 0.5, "2": bad})
    assert not masked_modules(model)


@pytest.mark.parametrize("bad", [1.0, -0.1, {"0": 0.5}])
def test_global_scope_rejects_bad_sparsity(bad):
    model = _mlp()
    with pytest.raises(SparsesearchError):
        sparsesearch.prune(model, "magnitude", bad, scope="global")
    assert not masked_modules(model)


def test_bad_scope():
    with pytest.raises(SparsesearchError, match="scope"):
        sparsesearch.prune(_mlp(), "magnitude", 0.5, scope="network")


def test_unknown_layer_name_lists_the_layers():
    model = _mlp()
    with pytest.raises(SparsesearchError) as err:
        sparsesearch.prune(model, "magnitude", {"0": 0.3, "fc9": 0.5})
    message = str(err.value)
    assert "'fc9'" in message
    assert "0, 2, 4" in message
    assert not masked_modules(model)


def test_dict_sparsity_prunes_only_the_named_layers():
    model = _mlp()
    sparsesearch.prune(model, "magnitude", {"2": 0.5})
    assert set(masked_modules(model)) == {"2"}
    assert int((model[2].weight == 0).sum()) == 64


def test_gradient_without_data():
    model = _mlp()
    with pytest.raises(StrategyError, match="'gradient'.*data"):
        sparsesearch.prune(model, "gradient", 0.5)
    assert not masked_modules(model)


class _Scores(sparsesearch.Strategy):
    """A strategy returning whatever ``make(layer)`` gives."""

    name = "broken-scores"

    def __init__(self, make, granularity="weight"):
        self.make = make
        self.granularity = granularity

    def score(self, layer, context):
        return self.make(layer)


def _nan_in_second_layer(layer):
    s = layer.weight.abs().clone()
    if layer.name == "2":
        s[0, 0] = float("nan")
    return s


@pytest.mark.parametrize(
    "strategy, what",
    [
        (_Scores(lambda layer: layer.weight.abs().flatten()), "shape"),
        (_Scores(lambda layer: layer.weight.abs()[:, :1]), "shape"),
        (_Scores(_nan_in_second_layer), "NaN"),
        (_Scores(lambda layer: layer.weight.abs() / 0.0 * torch.sign(layer.weight)), "infinite"),
        (_Scores(lambda layer: layer.weight.abs(), granularity="channel"), "shape"),
        (_Scores(lambda layer: layer.weight.abs().tolist()), "list"),
    ],
)
def test_bad_scores_name_strategy_and_layer(strategy, what):
    model = _mlp()
    reference = copy.deepcopy(model)
    with pytest.raises(StrategyError) as err:
        sparsesearch.prune(model, strategy, 0.5)
    message = str(err.value)
    assert "'broken-scores'" in message
    assert "layer '0'" in message or "layer '2'" in message
    assert what in message
    if what == "NaN":
        assert "layer '2'" in message
    # all layers are scored before any is masked: nothing half-pruned
    _assert_untouched(model, reference)


def test_bad_scores_from_a_registered_plugin(registry):
    class Plugin:
        @sparsesearch.hookimpl
        def sparsesearch_register_strategies(self, register):
            strategy = _Scores(lambda layer: torch.full(layer.weight.shape[:1], float("nan")), "channel")
            strategy.name = "nan-plugin"
            register(strategy)

    plugins.register_plugin(Plugin(), name="nan-plugin-source")
    with pytest.raises(StrategyError, match="'nan-plugin'.*layer '0'"):
        sparsesearch.prune(_mlp(), "nan-plugin", 0.5)


def test_strategy_instance_with_bad_granularity():
    with pytest.raises(StrategyError, match="granularity"):
        sparsesearch.prune(_mlp(), _Scores(lambda layer: layer.weight.abs(), "filters"), 0.5)


def test_channel_strategy_with_explicit_output_sparsity():
    model = _mlp()
    with pytest.raises(StrategyError, match="'4'"):
        sparsesearch.prune(model, "l1-filter", {"0": 0.5, "4": 0.3})
    assert not masked_modules(model)
    # zero for the output layer is fine, and a float leaves the output layer whole
    sparsesearch.prune(model, "l1-filter", {"0": 0.5, "4": 0.0})
    sparsesearch.prune(model, "l1-filter", 0.5)
    assert bool((model[4].weight != 0).all())


def test_numpy_floats_are_accepted():
    np = pytest.importorskip("numpy")
    model = _mlp()
    sparsesearch.prune(model, "magnitude", np.float32(0.25))
    assert int((model[0].weight == 0).sum()) == 48


def test_prune_returns_the_model_and_excludes_layers():
    model = _mlp()
    out = sparsesearch.prune(model, "magnitude", 0.5, exclude=["4"])
    assert out is model
    assert set(masked_modules(model)) == {"0", "2"}
    out = sparsesearch.prune(_mlp(), "magnitude", 0.5, include=["2"])
    assert set(masked_modules(out)) == {"2"}


# -- global scope ---------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [_mlp, _convnet])
@pytest.mark.parametrize("amount", [0.3, 0.6, 0.85])
def test_global_scope_matches_torch_global_unstructured(factory, amount):
    ours = factory(seed=3)
    theirs = copy.deepcopy(ours)
    sparsesearch.prune(ours, "magnitude", amount, scope="global")
    targets = [
        (m, "weight") for m in theirs.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
    total = sum(m.weight.numel() for m, _ in targets)
    ours_modules = dict(ours.named_modules())
    zeros = 0
    for name, module in theirs.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        mine = ours_modules[name].weight == 0
        assert int(mine.sum()) == int((module.weight_mask == 0).sum()), name
        assert torch.equal(mine, module.weight_mask == 0), name  # no ties: the same weights
        zeros += int(mine.sum())
    assert zeros == round(amount * total)
    assert sparsesearch.count_params(ours).remaining == sparsesearch.count_params(theirs).remaining


def test_global_scope_differs_from_layerwise():
    model = _mlp()
    with torch.no_grad():
        model[0].weight.add_(10.0 * torch.sign(model[0].weight))  # all |w| > 10 in layer 0
    layerwise = copy.deepcopy(model)
    sparsesearch.prune(model, "magnitude", 0.3, scope="global")
    assert int((model[0].weight == 0).sum()) == 0
    zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 2, 4))
    assert zeros == round(0.3 * (192 + 128 + 24))
    sparsesearch.prune(layerwise, "magnitude", 0.3)
    assert int((layerwise[0].weight == 0).sum()) == round(0.3 * 192)


def test_global_scope_channel_keeps_output_layer_and_a_channel_per_layer():
    model = _convnet()
    sparsesearch.prune(model, "l1-filter", 0.9999, scope="global")
    for i in (0, 2):
        rows = (model[i].weight.detach().flatten(1) != 0).any(1)
        assert int(rows.sum()) == 1
    assert bool((model[5].weight != 0).all())


def test_global_scope_on_a_model_with_only_an_output_layer():
    layer = nn.Linear(4, 3)
    sparsesearch.prune(layer, "l1-filter", 0.5, scope="global")
    assert bool((layer.weight != 0).all())
