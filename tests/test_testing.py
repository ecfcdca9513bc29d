"""The conformance kit: built-ins pass, broken strategies fail with messages that say how to fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import sparsesearch
from sparsesearch.testing import (
    StrategyContractError,
    check_strategy,
    parametrize_strategies,
    strategy_cases,
)

BUILTINS = ["gradient", "l1-filter", "magnitude", "random"]


@pytest.mark.parametrize("info", sparsesearch.list_strategies(), ids=lambda i: i.name)
def test_builtin_strategies_pass(info):
    check_strategy(info.strategy)


def test_accepts_names_and_infos():
    check_strategy("magnitude")
    check_strategy(sparsesearch.get_strategy("l1-filter"), seed=3)


def test_error_is_an_assertion_error():
    assert issubclass(StrategyContractError, AssertionError)


def test_parametrize_helpers_list_registered_strategies():
    names = parametrize_strategies()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)
    assert parametrize_strategies(distribution="sparsesearch") == BUILTINS
    assert parametrize_strategies(distribution="no-such-distribution") == []
    cases = strategy_cases(distribution="sparsesearch")
    assert [c.id for c in cases] == BUILTINS
    assert all(isinstance(c.values[0], sparsesearch.Strategy) for c in cases)


def test_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_strategy("random")
    assert torch.equal(before, torch.get_rng_state())


def test_usable_without_pytest():
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "import sparsesearch.testing as t\n"
        "t.check_strategy('magnitude')\n"
        "print(t.parametrize_strategies())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "magnitude" in out.stdout


# --------------------------------------------------------------------------- broken strategies


class _Base(sparsesearch.Strategy):
    name = "broken"
    granularity = "weight"
    requires_data = False


def _fails(strategy) -> str:
    with pytest.raises(StrategyContractError) as info:
        check_strategy(strategy)
    return str(info.value)


def test_wrong_shape_weight_granularity():
    class ReducesKernel(_Base):
        def score(self, layer, context):
            w = layer.weight.abs()
            return w.flatten(2).sum(2) if w.dim() > 2 else w

    msg = _fails(ReducesKernel())
    assert "Conv1d(4, 8, k=3)" in msg
    assert "returned shape (8, 4) but granularity='weight' needs (8, 4, 3)" in msg
    assert "one score per weight" in msg
    assert "granularity='channel'" in msg and "(out_channels,)" in msg


def test_wrong_shape_channel_granularity():
    class PerWeight(_Base):
        granularity = "channel"

        def score(self, layer, context):
            return layer.weight.abs()

    msg = _fails(PerWeight())
    assert "returned shape (8, 6) but granularity='channel' needs (8,)" in msg
    assert "one score per output channel" in msg
    assert "flatten(1)" in msg


def test_grouped_convolution_shape_mistake():
    class AssumesDenseConv(_Base):
        def score(self, layer, context):
            m = layer.module
            if isinstance(m, torch.nn.Linear):
                return layer.weight.abs()
            return torch.ones(m.out_channels, m.in_channels, *m.kernel_size)

    msg = _fails(AssumesDenseConv())
    assert "Conv1d(8, 8, k=3, groups=2)" in msg
    assert "needs (8, 4, 3)" in msg
    assert "in_channels/groups" in msg


def test_returns_not_a_tensor():
    class ReturnsArray(_Base):
        def score(self, layer, context):
            return layer.weight.abs().numpy()

    msg = _fails(ReturnsArray())
    assert "returned ndarray, not a torch.Tensor" in msg
    assert "torch.as_tensor" in msg


def test_mutates_weights_in_place():
    class InPlace(_Base):
        def score(self, layer, context):
            return layer.weight.abs_()

    msg = _fails(InPlace())
    assert "modified a weight of the model ('0.weight')" in msg
    assert "read-only" in msg and "layer.weight.abs(), not layer.weight.abs_()" in msg


def test_mutates_bias():
    class ZeroesBias(_Base):
        def score(self, layer, context):
            if layer.module.bias is not None:
                with torch.no_grad():
                    layer.module.bias.zero_()
            return layer.weight.abs()

    msg = _fails(ZeroesBias())
    assert "modified a bias of the model ('0.bias')" in msg


def test_touches_grad():
    class ZeroGrad(_Base):
        def score(self, layer, context):
            layer.module.zero_grad()
            return layer.weight.abs()

    msg = _fails(ZeroGrad())
    assert "modified the .grad of '0.weight'" in msg
    assert "context.gradients" in msg


def test_switches_model_to_eval():
    class Eval(_Base):
        def score(self, layer, context):
            context.model.eval()
            return layer.weight.abs()

    msg = _fails(Eval())
    assert "train() and eval()" in msg


def test_returns_nan():
    class NaN(_Base):
        def score(self, layer, context):
            w = layer.weight.abs()
            return w / w.sum(dim=0, keepdim=True) * float("nan")

    msg = _fails(NaN())
    assert "non-finite scores (48 NaN, 0 inf of 48)" in msg
    assert "epsilon" in msg and "torch.nan_to_num" in msg


def test_returns_inf():
    class Inf(_Base):
        def score(self, layer, context):
            return torch.log(torch.zeros_like(layer.weight))

    msg = _fails(Inf())
    assert "0 NaN, 48 inf" in msg


def test_nondeterministic_random_without_seed():
    class Unseeded(_Base):
        def score(self, layer, context):
            return torch.rand(layer.weight.shape)

    msg = _fails(Unseeded())
    assert "different scores on two calls with the same context.seed=0" in msg
    assert "context.generator(layer)" in msg


def test_stateful_strategy_is_nondeterministic():
    class Counter(_Base):
        calls = 0

        def score(self, layer, context):
            type(self).calls += 1
            return layer.weight.abs() + self.calls

    msg = _fails(Counter())
    assert "different scores" in msg and "keep no state between calls" in msg


def test_reseeds_global_rng():
    class Reseeds(_Base):
        def score(self, layer, context):
            torch.manual_seed(context.seed)
            return torch.rand(layer.weight.shape)

    msg = _fails(Reseeds())
    assert "global random number generator" in msg
    assert "context.generator(layer)" in msg


def test_needs_gradients_but_does_not_require_data():
    class ForgotRequiresData(_Base):
        def score(self, layer, context):
            return (layer.weight * context.gradient(layer)).abs()

    msg = _fails(ForgotRequiresData())
    assert "raised StrategyError: no gradient for layer '0'" in msg
    assert "requires_data=False" in msg and "set requires_data = True" in msg


def test_requires_data_but_reads_gradients_wrongly():
    class WrongKey(_Base):
        requires_data = True

        def score(self, layer, context):
            return (layer.weight * context.gradients[layer.module]).abs()

    msg = _fails(WrongKey())
    assert "raised KeyError" in msg
    assert "keyed by layer name ('0', '2', '4')" in msg
    assert "context.gradients[layer.name]" in msg


def test_requires_data_gets_gradients():
    seen = {}

    class Taylorish(_Base):
        requires_data = True
        granularity = "channel"

        def score(self, layer, context):
            seen[layer.name] = context.num_batches
            assert context.gradients[layer.name].shape == layer.weight.shape
            assert context.gradient_squares[layer.name].shape == layer.weight.shape
            return context.taylor[layer.name].clone()

    check_strategy(Taylorish())
    assert seen and set(seen.values()) == {2}


def test_mutates_context_gradients():
    class AbsInPlace(_Base):
        requires_data = True

        def score(self, layer, context):
            return context.gradients[layer.name].abs_()

    msg = _fails(AbsInPlace())
    assert "modified context.gradients['0'] in place" in msg


def test_not_implemented_score():
    class Nothing(_Base):
        pass

    assert "does not implement score()" in _fails(Nothing())


def test_crash_on_some_layers():
    class LinearOnly(_Base):
        def score(self, layer, context):
            if not isinstance(layer.module, torch.nn.Linear):
                raise TypeError("only Linear layers are supported")
            return layer.weight.abs()

    msg = _fails(LinearOnly())
    assert "Conv1d(4, 8, k=3) (layer '0') raised TypeError: only Linear layers" in msg
    assert "every Linear and Conv1d/2d/3d layer" in msg


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"name": ""}, "set the class attribute `name`"),
        ({"name": "my strategy"}, "no spaces or commas"),
        ({"granularity": "filter"}, "granularity='filter': set granularity = \"weight\""),
        ({"requires_data": "yes"}, "requires_data='yes'"),
        ({"description": None}, "description to a one-line string"),
    ],
)
def test_invalid_attributes(attrs, expected):
    def score(self, layer, context):
        return layer.weight.abs()

    cls = type("Bad", (_Base,), {"score": score, **attrs})
    assert expected in _fails(cls())


def test_passing_the_class_or_something_else():
    class Fine(_Base):
        def score(self, layer, context):
            return layer.weight.abs()

    assert "call check_strategy(Fine())" in _fails(Fine)
    assert "subclass sparsesearch.Strategy" in _fails(object())
    check_strategy(Fine())


def test_fails_on_masked_layers():
    class RawParameter(_Base):
        def score(self, layer, context):
            return layer.module._parameters["weight"].detach().abs()

    msg = _fails(RawParameter())
    assert "at sparsity 0.75 failed with KeyError" in msg
    assert "already pruned at 0.5" in msg and "read layer.weight" in msg


# --------------------------------------------------------------------------- one contract check

BAD_ATTRIBUTES = [
    ({"name": ""}, "Bad.name is '': set the class attribute `name`"),
    ({"name": "my strategy"}, "no spaces or commas"),
    ({"granularity": "filter"}, "has granularity='filter': set granularity = \"weight\""),
    ({"requires_data": "yes"}, "has requires_data='yes': set requires_data = True"),
    ({"description": None}, "has description=None: set description to a one-line string"),
    ({"score": sparsesearch.Strategy.score}, "does not implement score()"),
]


@pytest.mark.parametrize(("attrs", "expected"), BAD_ATTRIBUTES, ids=lambda v: str(v)[:30])
def test_the_registry_and_the_kit_reject_the_same_strategies(attrs, expected):
    """One check (``plugins.validate_strategy``): what the kit refuses, the registry refuses
    too, with the same explanation, naming the plugin."""
    from sparsesearch import plugins
    from sparsesearch.errors import PluginError

    def score(self, layer, context):
        return layer.weight.abs()

    strategy = type("Bad", (_Base,), {"score": score, **attrs})()
    kit_message = _fails(strategy)
    assert expected in kit_message

    class Plugin:
        @sparsesearch.hookimpl
        def sparsesearch_register_strategies(self, register):
            register(strategy)

    plugins.reset_plugins()
    try:
        plugins.register_plugin(Plugin(), name="bad-attributes")
        with pytest.raises(PluginError) as err:
            sparsesearch.list_strategies()
    finally:
        plugins.reset_plugins()
    assert str(err.value) == f"plugin 'bad-attributes' (registered at run time): {kit_message}"


# --------------------------------------------------------------------------- the models checked


class _Net(torch.nn.Module):
    """An author's own model: a Linear with 13 inputs that none of the kit's models has."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(13, 9)
        self.bn = torch.nn.BatchNorm1d(9)
        self.fc2 = torch.nn.Linear(9, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class _FailsOnThirteenInputs(_Base):
    def score(self, layer, context):
        if isinstance(layer.module, torch.nn.Linear) and layer.module.in_features == 13:
            raise ValueError("13 inputs are not supported")
        return layer.weight.abs()


def test_authors_pass_their_own_models():
    check_strategy(_FailsOnThirteenInputs())  # the kit's models alone do not find it
    torch.manual_seed(0)
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for models in ([(net, torch.randn(4, 13))], {"my net": (net, torch.randn(4, 13))}, (net, torch.randn(4, 13))):
        with pytest.raises(StrategyContractError) as err:
            check_strategy(_FailsOnThirteenInputs(), models=models)
        assert "Linear(13, 9) (layer 'fc1') raised ValueError: 13 inputs are not supported" in str(err.value)
    # a passing strategy on the author's model, with their (x, y) batches and gradients
    batches = [(torch.randn(6, 13), torch.randint(0, 4, (6,))) for _ in range(2)]
    check_strategy("gradient", models=[(net, batches)])
    check_strategy("l1-filter", models={"mine": (net, torch.randn(4, 13))}, default_models=False)
    # the author's model is copied, never modified
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training


def test_the_engine_check_runs_on_the_authors_models():
    class RawParameter(_Base):  # breaks only on masked layers: the second prune() sees them
        def score(self, layer, context):
            return layer.module._parameters["weight"].detach().abs()

    with pytest.raises(StrategyContractError, match=r"prune\(\) on your model 'mine' at sparsity 0.75"):
        check_strategy(RawParameter(), models={"mine": (_Net(), torch.randn(4, 13))},
                       default_models=False)


def test_bad_models_argument():
    with pytest.raises(TypeError, match="not a bare module"):
        check_strategy("magnitude", models=_Net())
    with pytest.raises(TypeError, match="has no input"):
        check_strategy("magnitude", models=[_Net()])
    with pytest.raises(TypeError, match="needs models"):
        check_strategy("magnitude", default_models=False)


def test_the_kit_includes_batchnorm_residual_and_depthwise_models():
    from sparsesearch.testing import contract_models

    models = contract_models()
    assert {"batchnorm", "residual", "depthwise-separable"} <= set(models)
    kinds = {key: {type(m) for m in model.modules()} for key, (model, _) in models.items()}
    assert torch.nn.BatchNorm2d in kinds["batchnorm"] and torch.nn.BatchNorm1d in kinds["batchnorm"]
    depthwise = [m for m in models["depthwise-separable"][0].modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise
    model, batches = models["residual"]
    assert model(batches[0][0]).shape == (batches[0][0].shape[0], 3)


def test_a_forward_pass_that_updates_batchnorm_statistics_is_caught():
    """Only a model with BatchNorm shows it: score() running context.model in train mode."""

    class ForwardPass(_Base):
        def score(self, layer, context):
            first = next(m for m in context.model.modules()
                         if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)))
            if isinstance(first, torch.nn.Linear):
                shape = (first.in_features,)
            else:
                shape = (first.in_channels,) + (5,) * (first.weight.dim() - 2)
            with torch.no_grad():
                context.model(torch.randn((2, *shape), generator=context.generator(layer)))
            return layer.weight.abs()

    msg = _fails(ForwardPass())
    assert "modified a buffer of the model" in msg and "running_mean" in msg
