"""Structured (channel) plans spend their budget: dependency groups are the unit, the planned
count is the compacted model's count exactly (parameters and MACs), tied channels are removed
together, and strategies see the graph (a network-slimming strategy in a few lines)."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch.budget import ChannelBudgetPlan, plan_budget
from sparsesearch.compact import (
    compact,
    dependency_graph,
    dependent_masks,
    graph_of,
    group_scores,
)
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.macs import count_macs
from sparsesearch.masks import get_mask
from sparsesearch.models import build_model
from sparsesearch.prune import apply_sparsity
from sparsesearch.strategy import ScoreContext

HEURISTICS = ("uniform", "global", "lamp", "erk")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class ConvBNHead(nn.Module):
    """Conv2d + BatchNorm2d blocks and a Flatten -> Linear(512, 10) head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 10))

    def forward(self, x):
        return self.head(self.features(x))


MODELS = {
    "digits-cnn": (lambda: build_model("digits-cnn"), (2, 1, 8, 8)),
    "lenet5": (lambda: build_model("lenet5"), (2, 1, 28, 28)),
    "cifar-resnet": (lambda: build_model("cifar-resnet"), (2, 3, 32, 32)),
    "conv-bn-head": (ConvBNHead, (2, 1, 8, 8)),
    "resnet18": (lambda: build_model("resnet18", num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: build_model("mobilenet_v2", num_classes=10), (2, 3, 32, 32)),
}
LARGE = {"resnet18", "mobilenet_v2"}


def _model(name: str, seed: int = 0):
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    model = factory()
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics and shifts
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.bias.uniform_(0.1, 0.5)
        model(torch.randn(4, *shape[1:]))
    model.eval()
    return model, torch.randn(*shape)


def _l1(layers):
    return {layer.name: layer.weight.abs().flatten(1).sum(1) for layer in layers}


def _mask_and_compact(model, plan, keep, scores, x):
    """What a search trial does: mask a copy (apply_recipe), BatchNorm follows, compact."""
    work = copy.deepcopy(model)
    layers = find_layers(work)
    apply_sparsity(layers, scores, plan.to_sparsity(keep), "channel")
    dependent_masks(work, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is blocked or left behind
        result = compact(work, example_input=x)
    return work, result


def _spent_or_full(plan: ChannelBudgetPlan, keep) -> None:
    """>= 97 % of the budget, or no group can keep one more channel (its next block of
    ``channel_multiple``) within it."""
    used = plan.params_for(keep)
    assert used <= plan.budget_params
    if used >= 0.97 * plan.budget_params:
        return
    gk = plan.group_keep(keep)
    for g in plan.groups:
        nxt = min((gk[g.index] // plan.multiple + 1) * plan.multiple, g.size)
        if gk[g.index] < g.max_keep and nxt <= g.max_keep:
            more = dict(gk)
            more[g.index] = nxt
            assert plan.graph.count(more, plan.metric) > plan.budget_params, g.layers


CASES = [(m, metric) for m in MODELS for metric in ("params", "macs")]


@pytest.mark.parametrize("name,metric", CASES)
def test_planned_count_is_the_compacted_count(name, metric):
    model, x = _model(name)
    layers = find_layers(model, example_input=x)
    plan = plan_budget(model, layers, 0.3, granularity="channel", metric=metric, example_input=x)
    assert isinstance(plan, ChannelBudgetPlan)
    scores = _l1(layers)
    heuristics = HEURISTICS if name not in LARGE else (
        ("uniform", "lamp") if metric == "params" else ("global", "erk"))
    for h in heuristics:
        keep = plan.heuristic(h, scores)
        _spent_or_full(plan, keep)
        work, result = _mask_and_compact(model, plan, keep, scores, x)
        assert not result.fallback and not result.tied and not result.blocked, h
        counted = result.params_after if metric == "params" else count_macs(result.model, x)
        assert counted == plan.params_for(keep), (h, counted, plan.params_for(keep))
        # and the masked model keeps exactly the planned channels per layer
        for layer in find_layers(work):
            rows = (get_mask(layer.module) != 0).flatten(1).any(1)
            assert int(rows.sum()) == keep[layer.name], (h, layer.name)


@pytest.mark.parametrize("name", ["digits-cnn", "conv-bn-head", "cifar-resnet", "mobilenet_v2"])
def test_random_projections_are_exact_and_spend_the_budget(name):
    model, x = _model(name, seed=1)
    layers = find_layers(model, example_input=x)
    plan = plan_budget(model, layers, 0.4, granularity="channel", example_input=x)
    gen = torch.Generator().manual_seed(3)
    scores = _l1(layers)
    for trial in range(2):
        dens = {lb.name: float(torch.rand((), generator=gen)) * 0.9 + 0.1 for lb in plan.layers}
        keep = plan.project(dens)
        _spent_or_full(plan, keep)
        if trial == 0:
            _, result = _mask_and_compact(model, plan, keep, scores, x)
            assert result.params_after == plan.params_for(keep)


def test_structured_budget_use_was_low_and_is_now_full():
    """The issue's numbers: the per-layer price (own row + bias) left most of the budget
    unused on a Flatten -> Linear model; the exact price spends it."""
    model, x = _model("conv-bn-head")
    layers = find_layers(model, example_input=x)
    scores = _l1(layers)
    old = plan_budget(model, layers, 0.6, granularity="channel")  # no example: per-layer price
    new = plan_budget(model, layers, 0.6, granularity="channel", example_input=x)
    for h in HEURISTICS:
        keep_old = old.heuristic(h, scores)
        work = copy.deepcopy(model)
        apply_sparsity(find_layers(work), scores, old.to_sparsity(keep_old), "channel", groups=False)
        dependent_masks(work, x)
        used_old = compact(work, example_input=x).params_after / old.budget_params
        keep_new = new.heuristic(h, scores)
        assert used_old < 0.5, h
        _spent_or_full(new, keep_new)
        assert new.params_for(keep_new) >= 0.9 * new.budget_params, h


def test_residual_channels_form_groups_and_are_pruned_together():
    model, x = _model("cifar-resnet")
    layers = find_layers(model, example_input=x)
    graph = dependency_graph(model, layers, x)
    stream = graph.group("conv1")
    assert stream is not None
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stream.layers)
    assert graph.group("layer1.0.conv1").layers == ("layer1.0.conv1",)
    assert graph.fixed["fc"] == 10 and "fc" not in graph.group_of  # the classes stay
    assert graph.consumers["layer1.0.conv1"] == ("layer1.0.conv2",)
    assert graph.norms["layer1.0.conv1"] == "layer1.0.bn1"
    # the shortcut conv of stage 2 writes into stage 2's residual stream
    assert "layer2.0.shortcut.0" in graph.group("layer2.0.conv2").layers
    # masking: the same channel indices in every producer of the stream, BatchNorms follow
    plan = plan_budget(model, layers, 0.3, granularity="channel", example_input=x)
    work, result = _mask_and_compact(model, plan, plan.uniform(), _l1(layers), x)
    mods = dict(work.named_modules())
    pruned = {n: (get_mask(mods[n]) == 0).flatten(1).all(1) for n in stream.layers}
    first = pruned["conv1"]
    assert 0 < int(first.sum()) < first.numel()
    for n, p in pruned.items():
        assert torch.equal(p, first), n  # no tied channel half-pruned
    assert torch.equal(get_mask(mods["bn1"], "weight") == 0, first)
    assert not result.tied


def test_depthwise_channels_go_with_their_expansion():
    model, x = _model("mobilenet_v2")
    graph = dependency_graph(model, find_layers(model, example_input=x), x)
    g = graph.group("features.2.conv.0.0")  # 1x1 expansion
    assert g is not None and "features.2.conv.1.0" in g.layers  # its depthwise conv


def test_uniform_is_uniform_on_groups():
    model, x = _model("cifar-resnet")
    layers = find_layers(model, example_input=x)
    plan = plan_budget(model, layers, 0.3, granularity="channel", example_input=x)
    keep = plan.uniform()
    gk = plan.group_keep(keep)
    fractions = [gk[g.index] / g.size for g in plan.groups]
    smallest = min(g.size for g in plan.groups)
    assert max(fractions) - min(fractions) <= 2 / smallest
    # tied layers keep the same channels: conv1 is no longer left unpruned
    assert keep["conv1"] == keep["layer1.0.conv2"] < 16


def test_group_score_options():
    model, x = _model("cifar-resnet")
    layers = find_layers(model, example_input=x)
    graph = dependency_graph(model, layers, x)
    scores = _l1(layers)
    stream = graph.group("conv1")
    single = graph.group("layer1.0.conv1")
    # an untied layer scores exactly its own scores
    assert torch.equal(group_scores(single, scores), scores["layer1.0.conv1"].to(torch.float64))
    s, m, mx = (group_scores(stream, scores, how) for how in ("sum", "mean", "max"))
    members = len(stream.layers)
    assert torch.allclose(s, m * members)
    assert bool((mx <= s + 1e-12).all()) and bool((mx * members >= s - 1e-12).all())
    with pytest.raises(SparsesearchError, match="group score must be one of"):
        group_scores(stream, scores, "median")
    plan = plan_budget(model, layers, 0.3, granularity="channel", example_input=x, group_score="max")
    assert plan.params_for(plan.heuristic("global", scores)) <= plan.budget_params


def test_tied_layers_must_agree_in_params_for():
    model, x = _model("cifar-resnet")
    layers = find_layers(model, example_input=x)
    plan = plan_budget(model, layers, 0.3, granularity="channel", example_input=x)
    keep = plan.uniform()
    keep["conv1"] -= 1
    with pytest.raises(SparsesearchError, match="must keep the same channels"):
        plan.params_for(keep)


def test_prune_with_example_input_masks_groups_together():
    model, x = _model("cifar-resnet")
    sparsesearch.prune(model, "l1-filter", 0.5, example_input=x)
    mods = dict(model.named_modules())
    graph = graph_of(mods["conv1"])
    assert graph is not None
    stream = graph.group("conv1")
    masks = [(get_mask(mods[n]) == 0).flatten(1).all(1) for n in stream.layers]
    assert all(torch.equal(m, masks[0]) for m in masks) and int(masks[0].sum()) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compact(model, example_input=x)
    assert not result.tied and result.params_after < result.params_before


# -- strategies see the graph -----------------------------------------------------------------


def _doc_slimming():
    """The network-slimming example of docs/plugins.md, as written there."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text[text.index("## Structured strategies and the model's graph"):]
    code = re.search(r"```python\n(.*?)\n```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["Slimming"]


Slimming = _doc_slimming()


def test_score_context_gives_group_consumers_and_norm():
    model, x = _model("cifar-resnet")
    layers = find_layers(model, example_input=x)
    dependency_graph(model, layers, x)  # recorded on the modules, as plan_budget does
    ctx = ScoreContext(model=model)
    by = {layer.name: layer for layer in layers}
    assert "layer1.0.conv2" in ctx.group(by["conv1"])
    assert ctx.group("layer1.0.conv1") == ("layer1.0.conv1",)
    assert ctx.consumers(by["layer1.0.conv1"]) == ("layer1.0.conv2",)
    assert ctx.norm(by["layer1.0.conv1"]) is dict(model.named_modules())["layer1.0.bn1"]
    assert ctx.norm(by["fc"]) is None
    # without a recorded graph: group is the layer alone, the norm is still found
    fresh, _ = _model("cifar-resnet")
    from functools import partial

    from sparsesearch.compact import norm_after

    ctx2 = ScoreContext(model=fresh, find_norm=partial(norm_after, fresh))  # as the engine gives it
    assert ctx2.group("conv1") == ("conv1",) and ctx2.consumers("conv1") == ()
    assert ctx2.norm("layer1.0.conv1") is dict(fresh.named_modules())["layer1.0.bn1"]


def test_network_slimming_strategy_prunes_the_smallest_gammas():
    model, x = _model("conv-bn-head")
    with torch.no_grad():
        gamma = model.features[1].weight
        gamma.copy_(torch.linspace(1.0, 2.0, 16))
        gamma[[3, 7]] = 0.01  # two channels the BatchNorm has switched off
    sparsesearch.prune(model, Slimming(), {"features.0": 2 / 16}, example_input=x)
    rows = (get_mask(model.features[0]) == 0).flatten(1).all(1)
    assert rows.nonzero().flatten().tolist() == [3, 7]
    assert (get_mask(model.features[1], "weight") == 0).nonzero().flatten().tolist() == [3, 7]


def test_network_slimming_on_a_residual_network_prunes_streams_together():
    model, x = _model("cifar-resnet")
    sparsesearch.prune(model, Slimming(), 0.5, example_input=x)
    mods = dict(model.named_modules())
    stream = graph_of(mods["conv1"]).group("conv1")
    masks = [(get_mask(mods[n]) == 0).flatten(1).all(1) for n in stream.layers]
    assert all(torch.equal(m, masks[0]) for m in masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not compact(model, example_input=x).tied


def test_global_scope_prunes_groups_together():
    model, x = _model("cifar-resnet")
    sparsesearch.prune(model, "l1-filter", 0.4, scope="global", example_input=x)
    mods = dict(model.named_modules())
    graph = graph_of(mods["conv1"])
    for g in graph.groups:
        masks = [(get_mask(mods[n]) == 0).flatten(1).all(1) for n in g.layers]
        assert all(torch.equal(m, masks[0]) for m in masks), g.layers
    layers = find_layers(model)
    pruned = sum(int((get_mask(l.module) == 0).flatten(1).all(1).sum()) for l in layers)
    channels = sum(l.out_channels for l in layers if not l.is_output)
    assert 0.35 * channels <= pruned <= 0.4 * channels


class ConcatDepthwise(nn.Module):
    """Two branches concatenated into a BatchNorm, a conv followed by a depthwise conv with
    channel multiplier 2, both concatenated into a (grouped) 1x1 conv, and a Linear head."""

    def __init__(self, grouped: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(3, 5, 3, padding=1)
        self.dw = nn.Conv2d(5, 10, 3, padding=1, groups=5)
        self.mix = nn.Conv2d(20, 8, 1, groups=2 if grouped else 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        z = torch.relu(self.dw(torch.relu(self.c(x))))
        y = torch.relu(self.mix(torch.cat([y, z], 1)))
        return self.fc(torch.flatten(nn.functional.max_pool2d(y, 2), 1))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("metric", ["params", "macs"])
def test_concat_depthwise_and_grouped_convs_count_exactly(grouped, metric):
    torch.manual_seed(0)
    model = ConcatDepthwise(grouped).eval()
    x = torch.randn(2, 3, 8, 8)
    layers = find_layers(model, example_input=x)
    budget = 1.0 if grouped else 0.6
    plan = plan_budget(model, layers, budget, granularity="channel", metric=metric, example_input=x)
    graph = plan.graph
    if grouped:  # a grouped conv's channels stay (not planned): everything feeding it is fixed
        assert not graph.group_of and plan.min_feasible == plan.total_params
        assert "grouped conv" in graph.reasons["a"] and "grouped conv" in graph.reasons["mix"]
    else:  # concatenated producers are groups of their own; the depthwise conv follows c
        assert graph.group("a").layers == ("a",) and graph.group("b").layers == ("b",)
        assert graph.group("c").layers == ("c", "dw") and graph.group("c").multiplicity("dw") == 2
    scores = _l1(layers)
    for h in HEURISTICS:
        keep = plan.heuristic(h, scores)
        _spent_or_full(plan, keep)
        _, result = _mask_and_compact(model, plan, keep, scores, x)
        counted = result.params_after if metric == "params" else count_macs(result.model, x)
        assert counted == plan.params_for(keep), h


@pytest.mark.parametrize("name,metric", [("conv-bn-head", "params"), ("lenet5", "macs"),
                                         ("cifar-resnet", "params"), ("mobilenet_v2", "macs")])
def test_channel_multiple_keeps_blocks_counts_exactly_and_spends_the_budget(name, metric):
    model, x = _model(name)
    layers = find_layers(model, example_input=x)
    m = 8
    plan = plan_budget(model, layers, 0.3, granularity="channel", metric=metric, example_input=x,
                       channel_multiple=m)
    assert plan.multiple == m
    scores = _l1(layers)
    gen = torch.Generator().manual_seed(0)
    heuristics = HEURISTICS if name not in LARGE else ("uniform", "global")
    keeps = {h: plan.heuristic(h, scores) for h in heuristics}
    keeps["random"] = plan.project({lb.name: float(torch.rand((), generator=gen)) + 0.1 for lb in plan.layers})
    for how, keep in keeps.items():
        gk = plan.group_keep(keep)
        for g in plan.groups:
            k = gk[g.index]
            assert k % m == 0 or k == g.size or g.min_keep == g.max_keep, (how, g.layers, k, g.size)
        _spent_or_full(plan, keep)
        if how in ("uniform", "random"):
            _, result = _mask_and_compact(model, plan, keep, scores, x)
            counted = result.params_after if metric == "params" else count_macs(result.model, x)
            assert counted == plan.params_for(keep), how


def test_channel_multiple_1_is_the_plan_without_it():
    model, x = _model("conv-bn-head")
    layers = find_layers(model, example_input=x)
    scores = _l1(layers)
    one = plan_budget(model, layers, 0.3, granularity="channel", example_input=x, channel_multiple=1)
    plain = plan_budget(model, layers, 0.3, granularity="channel", example_input=x)
    for h in HEURISTICS:
        assert one.heuristic(h, scores) == plain.heuristic(h, scores)


def test_channel_multiple_is_checked_and_too_coarse_a_multiple_is_infeasible():
    model, x = _model("conv-bn-head")
    layers = find_layers(model, example_input=x)
    for bad in (0, 2.5, True):
        with pytest.raises(SparsesearchError, match="channel_multiple must be an int >= 1"):
            plan_budget(model, layers, 0.3, granularity="channel", example_input=x, channel_multiple=bad)
    # 16 channels at least per conv (the whole first layer): 3 % of the parameters cannot hold it
    with pytest.raises(sparsesearch.BudgetError, match="infeasible"):
        plan_budget(model, layers, 0.03, granularity="channel", example_input=x, channel_multiple=16)


@pytest.mark.parametrize("m", [1, 8])
def test_a_huge_relative_density_keeps_the_most_not_the_least(m):
    import numpy as np

    model, x = _model("conv-bn-head")
    layers = find_layers(model, example_input=x)
    plan = plan_budget(model, layers, 0.5, granularity="channel", example_input=x, channel_multiple=np.int64(m))
    assert plan.multiple == m and type(plan.multiple) is int  # numpy ints are ints
    first = plan.layers[0].name
    dens = {lb.name: 1.0 for lb in plan.layers}
    big = plan.project({**dens, first: 1e30})  # beyond int64 once scaled: was 1 channel
    assert big[first] == plan.project({**dens, first: 1e3})[first] == plan.layers[0].max_keep
    assert plan.params_for(big) <= plan.budget_params


class WideCNN(nn.Module):
    """Two convs at full resolution, two after a pool, Flatten -> Linear(hidden) -> Linear: the
    parameters sit in the head, the MACs in the first convs."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2),
                                      *block(32, 64), *block(64, 64), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("m", [1, 8])
def test_at_a_parameter_budget_the_top_up_stops_at_97_percent_on_compute_cheap_blocks(m, monkeypatch):
    """The bisection leaves a few % of a parameter budget; what still fits are the early,
    full-resolution channels (cheap in parameters, dear in MACs). The top-up stops at 97 %
    (blocks of 8: fewest MACs per parameter first): same budget rule, fewer MACs than filling
    until no block fits (what it did before)."""
    from sparsesearch import budget as budget_mod

    torch.manual_seed(0)
    model, x = WideCNN().eval(), torch.randn(2, 1, 16, 16)
    layers = find_layers(model, example_input=x)
    scores = _l1(layers)
    lean_macs, full_macs = [], []
    for fraction in (0.3, 0.1):
        plan = plan_budget(model, layers, fraction, granularity="channel", example_input=x, channel_multiple=m)
        monkeypatch.setattr(budget_mod, "FILL_TO", 1.0)
        full = {h: plan.heuristic(h) for h in ("uniform", "erk")}
        monkeypatch.undo()
        for h in ("uniform", "erk"):
            keep = plan.heuristic(h)
            _spent_or_full(plan, keep)
            used = plan.params_for(keep) / plan.budget_params
            assert used >= 0.97 or plan.params_for(keep) >= plan.params_for(full[h]), (fraction, h, used)
            macs = plan.graph.count(plan.group_keep(keep), "macs")
            assert macs <= plan.graph.count(plan.group_keep(full[h]), "macs"), (fraction, h)
            lean_macs.append(macs)
            full_macs.append(plan.graph.count(plan.group_keep(full[h]), "macs"))
            _, result = _mask_and_compact(model, plan, keep, scores, x)
            assert result.params_after == plan.params_for(keep)
    assert sum(lean_macs) < sum(full_macs)  # and somewhere strictly fewer


def test_at_a_mac_budget_the_top_up_fills_until_no_block_fits(monkeypatch):
    """A MAC budget already bounds the compute: its top-up is unchanged (best shape first,
    until nothing fits), whatever FILL_TO says."""
    from sparsesearch import budget as budget_mod

    torch.manual_seed(0)
    model, x = WideCNN().eval(), torch.randn(2, 1, 16, 16)
    layers = find_layers(model, example_input=x)
    for m in (1, 8):
        plan = plan_budget(model, layers, 0.3, granularity="channel", metric="macs", example_input=x,
                           channel_multiple=m)
        keeps = {h: plan.heuristic(h) for h in ("uniform", "erk")}
        monkeypatch.setattr(budget_mod, "FILL_TO", 0.5)
        assert {h: plan.heuristic(h) for h in ("uniform", "erk")} == keeps
        monkeypatch.undo()
        for keep in keeps.values():
            _spent_or_full(plan, keep)


@pytest.mark.parametrize("name", ["lenet5", "cifar-resnet", "conv-bn-head", "mobilenet_v2"])
def test_the_parameter_budget_top_up_never_costs_more_macs_than_the_shape_fill(name, monkeypatch):
    """Whatever the model: at a parameter budget the top-up spends >= 97 % (or no block fits)
    and ends on no more MACs than filling by shape until nothing fits (FILL_TO = 1)."""
    from sparsesearch import budget as budget_mod

    model, x = _model(name)
    layers = find_layers(model, example_input=x)
    scores = _l1(layers)
    for m in (1, 8):
        for fraction in (0.4, 0.3, 0.2):
            plan = plan_budget(model, layers, fraction, granularity="channel", example_input=x,
                               channel_multiple=m)
            gen = torch.Generator().manual_seed(m)
            dens = {lb.name: float(torch.rand((), generator=gen)) + 0.1 for lb in plan.layers}
            monkeypatch.setattr(budget_mod, "FILL_TO", 1.0)
            shape = {h: plan.heuristic(h, scores) for h in ("uniform", "erk")}
            shape["random"] = plan.project(dens)
            monkeypatch.undo()
            now = {h: plan.heuristic(h, scores) for h in ("uniform", "erk")}
            now["random"] = plan.project(dens)
            for how, keep in now.items():
                _spent_or_full(plan, keep)
                macs = plan.graph.count(plan.group_keep(keep), "macs")
                assert macs <= plan.graph.count(plan.group_keep(shape[how]), "macs"), (m, fraction, how)


def test_the_top_up_stop_and_its_acceptance_agree_on_97_percent(monkeypatch):
    """The stop spends at least ceil(0.97 B), so a lean top-up is not thrown away for being a
    fraction of a parameter short of 0.97 B (it was, at floor: lenet5, ERK, blocks of 2)."""
    from sparsesearch import budget as budget_mod

    model, x = _model("lenet5")
    plan = plan_budget(model, find_layers(model, example_input=x), 25456, granularity="channel",
                       example_input=x, channel_multiple=2)
    keep = plan.heuristic("erk")
    monkeypatch.setattr(budget_mod, "FILL_TO", 1.0)
    shape = plan.heuristic("erk")
    monkeypatch.undo()
    assert 0.97 * plan.budget_params <= plan.params_for(keep) <= plan.budget_params
    macs = plan.graph.count(plan.group_keep(keep), "macs")
    assert macs < plan.graph.count(plan.group_keep(shape), "macs")
