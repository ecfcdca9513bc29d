"""count_params and the parameter budget: allocations always meet it, limits hold, infeasible
budgets name the feasible minimum, LAMP and ERK behave as published, and masks built from an
allocation count back to it exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsesearch
from sparsesearch.budget import BudgetPlan, lamp_scores, plan_budget, resolve_budget
from sparsesearch.errors import BudgetError, SparsesearchError
from sparsesearch.layers import find_layers


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def _with_batchnorm(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 4),
    )
    with torch.no_grad():  # BatchNorm biases start at zero; make every parameter non-zero
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.bias.uniform_(0.1, 1.0)
    return model


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.hidden = nn.Linear(6, 6)
        self.decode = nn.Linear(6, 11)
        self.decode.weight = self.embed.weight  # tied

    def forward(self, idx):
        return self.decode(torch.relu(self.hidden(self.embed(idx))))


# -- count_params ---------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [_mlp, _convnet, _with_batchnorm, _Tied])
def test_count_params_of_dense_models(factory):
    model = factory()
    counts = sparsesearch.count_params(model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.remaining == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert sum(t for t, _ in counts.layers.values()) == counts.total
    assert sum(r for _, r in counts.layers.values()) == counts.remaining


def test_tied_weights_are_counted_once():
    model = _Tied()
    counts = sparsesearch.count_params(model)
    assert counts.total == 11 * 6 + (6 * 6 + 6) + 11  # embedding + hidden + decode bias
    assert counts.total < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


def test_count_params_per_layer_and_batchnorm():
    model = _with_batchnorm()
    counts = sparsesearch.count_params(model)
    assert counts.layers["0"] == (8 * 3 * 9 + 8, 8 * 3 * 9 + 8)
    assert counts.layers["1"] == (16, 16)  # BatchNorm2d weight + bias
    assert counts.layers["5"] == (24, 24)
    assert "2" not in counts.layers and "3" not in counts.layers  # no parameters of their own
    assert counts.sparsity == 0.0
    assert counts.compression == 1.0


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.9])
def test_remaining_after_pruning_is_total_minus_pruned(amount):
    model = _with_batchnorm()
    total = sparsesearch.count_params(model).total
    sparsesearch.prune(model, "magnitude", amount)
    layers = find_layers(model)
    pruned = sum(round(amount * layer.weight.numel()) for layer in layers)
    counts = sparsesearch.count_params(model)
    assert counts.total == total  # masks do not change the total
    assert counts.remaining == total - pruned
    for layer in layers:
        n = layer.module.weight.numel() + layer.module.bias.numel()
        assert counts.layers[layer.name] == (n, n - round(amount * layer.weight.numel()))
    assert counts.sparsity == pytest.approx(pruned / total)


def test_remaining_after_channel_pruning_counts_bias():
    model = _convnet()
    total = sparsesearch.count_params(model).total
    sparsesearch.prune(model, "l1-filter", 0.5)
    # conv0: 4 of 8 channels (27 weights + 1 bias each); conv1: 8 of 16 (72 + 1); output kept
    assert sparsesearch.count_params(model).remaining == total - 4 * 28 - 8 * 73


def test_count_params_with_torch_prune_global_unstructured():
    model = _mlp()
    total = sparsesearch.count_params(model).total
    targets = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
    prunable = sum(m.weight.numel() for m, _ in targets)
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=0.4)
    counts = sparsesearch.count_params(model)
    assert counts.total == total  # weight_orig counted, weight_mask (a buffer) not
    assert counts.remaining == total - round(0.4 * prunable)
    per_layer = {
        name: int((m.weight_mask == 0).sum()) for name, m in model.named_children() if hasattr(m, "weight_mask")
    }
    for name, zeros in per_layer.items():
        t, r = counts.layers[name]
        assert t - r == zeros
    # the `weight` attribute is stale until the next forward; counting must not depend on it
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(4, 20)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert sparsesearch.count_params(model).remaining == total - round(0.4 * prunable)


def test_count_params_with_other_parametrizations():
    from torch.nn.utils.parametrizations import weight_norm

    model = nn.Sequential(weight_norm(nn.Linear(5, 4)), nn.ReLU(), nn.Linear(4, 2))
    counts = sparsesearch.count_params(model)
    assert counts.total == sum(p.numel() for p in model.parameters())  # g, v, bias, ...


# -- budget plans ---------------------------------------------------------------------------


def _magnitude_scores(layers):
    return {layer.name: layer.weight.abs() for layer in layers}


def _allocations(plan: BudgetPlan, layers):
    scores = _magnitude_scores(layers)
    if plan.granularity == "channel":
        scores = {layer.name: layer.weight.abs().flatten(1).sum(1) for layer in layers}
    g = torch.Generator().manual_seed(0)
    random_density = {lb.name: float(torch.rand((), generator=g)) + 0.05 for lb in plan.layers}
    return {
        "uniform": plan.uniform(),
        "erk": plan.erk(),
        "global": plan.global_threshold(scores),
        "lamp": plan.lamp(scores),
        "project": plan.project(random_density),
        "heuristic-lamp": plan.heuristic("lamp", scores),
    }


BUDGETS = [0.05, 0.2, 0.5, 0.9, 1.0, 500, 1500, 3000]


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_allocation_meets_the_budget(budget):
    model = _mlp()
    layers = find_layers(model)
    plan = plan_budget(model, layers, budget)
    total = sparsesearch.count_params(model).total
    expected_budget = budget if isinstance(budget, int) else math.floor(budget * total)
    assert plan.budget_params == expected_budget
    max_params = plan.params_for({lb.name: lb.max_keep for lb in plan.layers})
    for name, keep in _allocations(plan, layers).items():
        assert plan.params_for(keep) <= plan.budget_params, name
        for lb in plan.layers:
            assert lb.min_keep <= keep[lb.name] <= lb.max_keep, (name, lb.name)
        # weight granularity spends the budget to the last parameter (or keeps everything)
        assert plan.params_for(keep) == min(plan.budget_params, max_params), name


@pytest.mark.parametrize("budget", [0.3, 0.6, 2000])
def test_channel_allocations_meet_budget_and_keep_output_layer(budget):
    model = _convnet()
    layers = find_layers(model)
    plan = plan_budget(model, layers, budget, granularity="channel")
    out = [lb for lb, layer in zip(plan.layers, layers) if layer.is_output]
    assert [lb.name for lb in out] == ["6"]
    for name, keep in _allocations(plan, layers).items():
        assert plan.params_for(keep) <= plan.budget_params, name
        assert keep["6"] == 5, name  # every output unit kept
        for lb in plan.layers:
            assert 1 <= lb.min_keep <= keep[lb.name] <= lb.max_keep <= lb.units


def test_min_and_max_sparsity_per_layer_are_respected():
    model = _mlp()
    layers = find_layers(model)
    plan = plan_budget(
        model, layers, 0.5, min_sparsity={"0": 0.5}, max_sparsity={"0": 0.8, "2": 0.6, "4": 0.9}
    )
    limits = {"0": (0.5, 0.8), "2": (0.0, 0.6), "4": (0.0, 0.9)}
    for name, keep in _allocations(plan, layers).items():
        assert plan.params_for(keep) <= plan.budget_params, name
        for lb in plan.layers:
            lo, hi = limits[lb.name]
            # limits count units the way masks do: a limit of s is round(s * n) pruned units
            pruned = lb.units - keep[lb.name]
            assert round(lo * lb.units) <= pruned <= round(hi * lb.units), (name, lb.name, pruned)


def test_infeasible_budget_names_the_feasible_minimum():
    model = _mlp()
    layers = find_layers(model)
    biases = 64 + 32 + 10
    # max_sparsity 0.999 by default: each layer keeps at least max(1, n - round(0.999 n))
    minimum = biases + sum(
        max(1, n - min(round(0.999 * n), n - 1)) for n in (20 * 64, 64 * 32, 32 * 10)
    )
    for budget in (minimum - 1, 10, 0.001):
        with pytest.raises(BudgetError, match=rf"\b{minimum}\b"):
            plan_budget(model, layers, budget)
    plan = plan_budget(model, layers, minimum)  # exactly the minimum is feasible
    assert plan.min_feasible == minimum
    keep = plan.uniform()
    assert plan.params_for(keep) == minimum


def test_infeasible_with_max_sparsity_limit():
    model = _mlp()
    layers = find_layers(model)
    plan = plan_budget(model, layers, 1.0, max_sparsity=0.5)
    with pytest.raises(BudgetError, match=str(plan.min_feasible)):
        plan_budget(model, layers, plan.min_feasible - 1, max_sparsity=0.5)


@pytest.mark.parametrize("bad", [0, -5, 0.0, 1.5, True, "10"])
def test_bad_budget_values(bad):
    with pytest.raises(SparsesearchError):
        resolve_budget(bad, 1000)


def test_lamp_scores_match_hand_computation():
    scores = torch.tensor([3.0, -1.0, 2.0, 0.5])
    # squares 9, 1, 4, 0.25; ascending 0.25, 1, 4, 9; suffix sums 14.25, 14, 13, 9
    expected = torch.tensor([9 / 9, 1 / 14, 4 / 13, 0.25 / 14.25], dtype=torch.float64)
    assert torch.allclose(lamp_scores(scores), expected)
    # keeps the shape, and the largest unit of every layer scores exactly 1
    matrix = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    lamp = lamp_scores(matrix)
    assert lamp.shape == (2, 2)
    assert lamp[1, 1] == 1.0
    # tie: the lower index counts as the smaller one
    assert torch.allclose(lamp, torch.tensor([[1 / 25, 4 / 24], [4 / 20, 1.0]], dtype=torch.float64))


def test_lamp_keeps_at_least_the_top_unit_per_layer_and_prefers_small_layers():
    model = _mlp()
    layers = find_layers(model)
    plan = plan_budget(model, layers, 0.05)
    keep = plan.lamp(_magnitude_scores(layers))
    density = {lb.name: keep[lb.name] / lb.units for lb in plan.layers}
    assert all(k >= 1 for k in keep.values())
    assert density["4"] > density["0"]


def test_erk_gives_smaller_layers_higher_density():
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 20), nn.ReLU(), nn.Linear(20, 10))
    layers = find_layers(model)
    plan = plan_budget(model, layers, 0.2)
    keep = plan.erk()
    density = {lb.name: keep[lb.name] / lb.units for lb in plan.layers}
    assert density["0"] < density["2"] < density["4"]
    assert plan.params_for(keep) == plan.budget_params
    # uniform, by contrast, is the same everywhere (to within a unit)
    uni = plan.uniform()
    ratios = [uni[lb.name] / lb.units for lb in plan.layers]
    assert max(ratios) - min(ratios) < 0.02


@pytest.mark.parametrize("heuristic", ["uniform", "erk", "global", "lamp"])
@pytest.mark.parametrize("budget", [0.1, 0.35, 2500])
def test_allocation_to_masks_counts_back_exactly(heuristic, budget):
    model = _mlp(seed=4)
    layers = find_layers(model)
    plan = plan_budget(model, layers, budget)
    keep = plan.heuristic(heuristic, _magnitude_scores(layers))
    sparsity = plan.to_sparsity(keep)
    assert plan.keep_from_sparsity(sparsity) == keep
    sparsesearch.prune(model, "magnitude", sparsity)
    remaining = sparsesearch.count_params(model).remaining
    assert remaining <= plan.budget_params
    assert remaining == plan.params_for(keep)


@pytest.mark.parametrize("heuristic", ["uniform", "erk", "global", "lamp"])
def test_channel_allocation_to_masks_counts_back_exactly(heuristic):
    model = _convnet(seed=5)
    layers = find_layers(model)
    plan = plan_budget(model, layers, 0.4, granularity="channel")
    scores = {layer.name: layer.weight.abs().flatten(1).sum(1) for layer in layers}
    keep = plan.heuristic(heuristic, scores)
    sparsity = plan.to_sparsity(keep)
    assert sparsity["6"] == 0.0
    sparsesearch.prune(model, "l1-filter", sparsity)
    remaining = sparsesearch.count_params(model).remaining
    assert remaining <= plan.budget_params
    assert remaining == plan.params_for(keep)
    kept_rows = {
        layer.name: int((layer.module.weight.detach().flatten(1) != 0).any(1).sum())
        for layer in layers
    }
    assert kept_rows == keep


def test_unknown_heuristic_and_missing_scores():
    model = _mlp()
    plan = plan_budget(model, find_layers(model), 0.5)
    with pytest.raises(SparsesearchError, match="uniform"):
        plan.heuristic("nope")
    with pytest.raises(SparsesearchError, match="scores"):
        plan.heuristic("lamp")
