"""The op table: ops are found by kind (module class along its MRO, function, method name), an
op without a handler is reported by name, and registering a handler makes the analysis handle
the op."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import sparsesearch
from sparsesearch.compact import CompactionWarning, compact, register_op
from sparsesearch.compact import ops
from sparsesearch.compact import handlers
from sparsesearch.compact.errors import Unsupported
from sparsesearch.compact.ops import channelwise, handler_for


@pytest.fixture
def table(monkeypatch):
    """A private copy of the op table: registrations in a test end with it."""
    for name in ("MODULE_OPS", "FUNCTION_OPS", "METHOD_OPS"):
        monkeypatch.setattr(ops, name, dict(getattr(ops, name)))
    return ops


class WithAct(nn.Module):
    """conv -> ``act`` -> conv -> ReLU -> mean -> Linear."""

    def __init__(self, act):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = act
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(F.relu(self.b(self.act(self.a(x)))).mean((2, 3)))


class Squared(WithAct):
    """The same with ``torch.square`` (a function not in the table) after the first conv."""

    def __init__(self):
        super().__init__(nn.Identity())

    def forward(self, x):
        return self.fc(F.relu(self.b(torch.square(self.a(x)))).mean((2, 3)))


def _pruned(model):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    sparsesearch.prune(model, "l1-filter", 0.5, example_input=x)
    return model.eval(), x


def test_an_op_without_a_handler_is_reported_by_name(table):
    assert nn.RReLU not in table.MODULE_OPS
    model, x = _pruned(WithAct(nn.RReLU()))
    with pytest.warns(CompactionWarning, match=r"layer 'act' \(RReLU\) is not supported"):
        result = compact(model, example_input=x)
    assert not result.fallback  # b's channels still go
    assert any(b.startswith("a: ") and "layer 'act' (RReLU) is not supported" in b for b in result.blocked)
    assert result.model.a.out_channels == 8 and result.model.b.out_channels == 4


def test_registering_a_module_handler_makes_the_analysis_handle_it(table):
    returned = register_op(nn.RReLU, handler=channelwise(zero_preserving=True))
    assert table.MODULE_OPS[nn.RReLU] is returned
    model, x = _pruned(WithAct(nn.RReLU()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompactionWarning)
        result = compact(model, example_input=x)
    assert not result.blocked and result.max_diff is not None
    assert result.model.a.out_channels == 4 and result.model.b.out_channels == 4
    assert result.removed_channels == 8


def test_registering_a_function_handler_with_the_decorator(table):
    model, x = _pruned(Squared())
    with pytest.warns(CompactionWarning, match="square .*is not supported"):
        before = compact(model, example_input=x)
    assert before.model.a.out_channels == 8

    @register_op(torch.square)
    def square(a, node, op):
        return a.channelwise(node, node.args[0], True)  # 0 ** 2 == 0, channel by channel

    assert table.FUNCTION_OPS[torch.square] is square and "square" not in table.METHOD_OPS
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompactionWarning)
        after = compact(model, example_input=x)
    assert after.model.a.out_channels == 4 and not after.blocked


def test_a_handler_that_raises_unsupported_gives_its_reason(table):
    def refuse(a, node, op):
        raise Unsupported("its slope is random in training")

    register_op(nn.RReLU, handler=refuse)
    model, x = _pruned(WithAct(nn.RReLU()))
    with pytest.warns(CompactionWarning):
        result = compact(model, example_input=x)
    assert any("layer 'act' (RReLU) is not supported (its slope is random in training)" in b
               for b in result.blocked)


def test_lookup_by_kind_follows_the_mro(table):
    class MyReLU(nn.ReLU):
        pass

    graph = fx.Graph()
    x = graph.placeholder("x")
    act = graph.call_module("act", (x,))
    odd = graph.call_module("odd", (act,))
    view = graph.call_method("view", (odd, -1))
    relu = graph.call_function(torch.relu, (view,))
    out = graph.output(relu)
    modules = {"act": MyReLU(), "odd": nn.RReLU()}

    assert handler_for(act, modules) == (table.MODULE_OPS[nn.ReLU], modules["act"])  # its base's
    unknown, module = handler_for(odd, modules)
    assert module is modules["odd"] and unknown is handlers.unknown_module  # not in the table: says no
    assert handler_for(view, modules)[0] is table.METHOD_OPS["view"]
    assert handler_for(relu, modules)[0] is table.FUNCTION_OPS[torch.relu]
    assert handler_for(x, modules)[0] is not None and handler_for(out, modules)[0] is not None

    mine = register_op(MyReLU, handler=channelwise(zero_preserving=False))
    assert handler_for(act, modules)[0] is mine  # the most specific registered class wins


@pytest.mark.parametrize("ceil_mode, return_indices, compacts", [(True, False, True), (False, True, False)])
def test_functional_max_pool_reads_return_indices_at_its_own_position(ceil_mode, return_indices, compacts):
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            y = F.max_pool2d(torch.relu(self.conv(x)), 2, 2, 0, 1, ceil_mode, return_indices)
            return self.fc((y[0] if return_indices else y).flatten(1))

    torch.manual_seed(0)
    model = Pooled()
    x = torch.randn(2, 1, 8, 8)
    sparsesearch.prune(model, "l1-filter", 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompactionWarning)
        res = compact(model, example_input=x)
    # ceil_mode (position 5) is not return_indices (position 6)
    assert (res.removed_channels > 0) is compacts
