"""Exact masks: per-layer counts, deterministic ties, never an empty layer, gradual pruning,
and masks that survive training, deepcopy, state_dict round trips and make_permanent."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import sparsesearch
from sparsesearch.errors import SparsesearchError
from sparsesearch.masks import exact_mask, get_mask, is_masked, masked_modules, num_to_prune

AMOUNTS = [0.1, 0.25, 0.5, 0.77, 0.95]

LAYERS = {
    "linear": lambda: nn.Linear(7, 6),
    "conv1d": lambda: nn.Conv1d(3, 6, 3),
    "conv2d": lambda: nn.Conv2d(4, 6, 3),
    "conv3d": lambda: nn.Conv3d(2, 6, 2),
    "conv2d-grouped": lambda: nn.Conv2d(4, 6, 3, groups=2),
}


def _with_head(layer: nn.Module) -> nn.Sequential:
    """``layer`` followed by a final Linear, so ``layer`` is not the output layer."""
    return nn.Sequential(layer, nn.Linear(3, 2))


def _zero_rows(weight: torch.Tensor) -> torch.Tensor:
    return (weight.detach().flatten(1) == 0).all(dim=1)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("amount", AMOUNTS)
def test_weight_granularity_prunes_exactly_round_amount_n(kind, amount):
    torch.manual_seed(0)
    model = _with_head(LAYERS[kind]())
    layer = model[0]
    n = layer.weight.numel()
    assert torch.count_nonzero(layer.weight) == n  # random init: no zeros to start with
    sparsesearch.prune(model, "magnitude", amount)
    expected = round(amount * n)
    assert int((layer.weight == 0).sum()) == expected
    mask = get_mask(layer)
    assert mask is not None and mask.shape == layer.weight.shape
    assert int((mask == 0).sum()) == expected
    # the zeros are exactly the masked entries
    assert torch.equal(layer.weight == 0, mask == 0)
    # head layer pruned at the same amount, independently
    head = model[1]
    m = head.weight.numel()
    assert int((head.weight == 0).sum()) == min(round(amount * m), m - 1)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("amount", [0.2, 0.5, 0.67, 0.9])
def test_channel_granularity_prunes_whole_rows_and_bias(kind, amount):
    torch.manual_seed(1)
    model = _with_head(LAYERS[kind]())
    layer = model[0]
    out = layer.weight.shape[0]
    sparsesearch.prune(model, "l1-filter", amount)
    rows = _zero_rows(layer.weight)
    assert int(rows.sum()) == round(amount * out)
    # pruned channels: whole row zero and bias zero; kept channels: untouched (no zeros)
    assert torch.equal(layer.bias == 0, rows)
    kept = layer.weight.detach()[~rows]
    assert torch.count_nonzero(kept) == kept.numel()
    # the output layer keeps every unit
    assert not _zero_rows(model[1].weight).any()
    assert torch.count_nonzero(model[1].bias) == model[1].bias.numel()


def test_ties_are_deterministic_lowest_flat_index_first():
    masks = []
    for _ in range(2):
        layer = nn.Linear(4, 5)
        with torch.no_grad():
            layer.weight.fill_(0.5)
        sparsesearch.prune(layer, "magnitude", 0.4)  # 20 weights, 8 pruned
        masks.append(get_mask(layer).clone())
    assert torch.equal(masks[0], masks[1])
    flat = masks[0].flatten()
    assert torch.equal(flat[:8], torch.zeros(8))
    assert torch.equal(flat[8:], torch.ones(12))


def test_channel_ties_prune_lowest_channel_index_first():
    model = _with_head(nn.Conv2d(2, 6, 3))
    with torch.no_grad():
        model[0].weight.fill_(-0.25)
    sparsesearch.prune(model, "l1-filter", 0.5)
    assert _zero_rows(model[0].weight).tolist() == [True, True, True, False, False, False]


def test_exact_mask_ties_and_previous():
    scores = torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0, 0.5])
    mask = exact_mask(scores, 0.5)  # prune 3: 0.5, then the first two 1.0s
    assert mask.tolist() == [1, 0, 0, 1, 1, 0]
    # previously pruned entries go first, even with high scores; masks only grow
    previous = torch.tensor([0.0, 1, 1, 1, 1, 1])
    mask = exact_mask(scores, 0.5, previous=previous)
    assert mask.tolist() == [0, 0, 1, 1, 1, 0]
    # previous with more zeros than asked: previous is kept whole
    previous = torch.tensor([0.0, 0, 0, 0, 1, 1])
    assert exact_mask(scores, 0.2, previous=previous).tolist() == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "factory, units",
    [
        (lambda: nn.Linear(1, 1), 1),
        (lambda: nn.Linear(2, 1), 2),
        (lambda: nn.Linear(10, 10), 100),
        (lambda: nn.Conv2d(1, 1, 1), 1),
        (lambda: nn.Conv2d(2, 3, 2, groups=1), 24),
    ],
)
def test_never_a_layer_without_weights(factory, units):
    layer = factory()
    sparsesearch.prune(layer, "magnitude", 0.9999)
    assert layer.weight.numel() == units
    assert int(torch.count_nonzero(layer.weight)) == 1


@pytest.mark.parametrize("out", [1, 2, 3, 8])
def test_never_a_layer_without_channels(out):
    model = _with_head(nn.Conv2d(2, out, 1))
    sparsesearch.prune(model, "l1-filter", 0.9999)
    assert int((~_zero_rows(model[0].weight)).sum()) == 1
    assert int(torch.count_nonzero(model[0].bias)) == 1


def test_num_to_prune():
    assert num_to_prune(0.0, 10) == 0
    assert num_to_prune(0.3, 10) == 3
    assert num_to_prune(0.7, 10) == 7  # 0.7 * 10 == 7.000000000000001
    assert num_to_prune(0.9999, 3) == 2
    assert num_to_prune(0.5, 1) == 0
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(SparsesearchError):
            num_to_prune(bad, 10)


@pytest.mark.parametrize("strategy", ["random", "magnitude"])
def test_gradual_pruning_masks_only_grow(strategy):
    torch.manual_seed(2)
    model = _with_head(nn.Conv2d(3, 8, 3))
    layer = model[0]
    n = layer.weight.numel()
    sparsesearch.prune(model, strategy, 0.3, seed=0)
    first = get_mask(layer).clone()
    # a different seed scores differently: without the previous mask, random would not nest
    sparsesearch.prune(model, strategy, 0.6, seed=1)
    second = get_mask(layer)
    assert int((first == 0).sum()) == round(0.3 * n)
    assert int((second == 0).sum()) == round(0.6 * n)
    assert bool(((first == 0) <= (second == 0)).all())
    assert torch.equal(layer.weight == 0, second == 0)


def test_gradual_channel_pruning_and_mixed_granularity():
    torch.manual_seed(3)
    model = _with_head(nn.Conv2d(3, 10, 3))
    layer = model[0]
    sparsesearch.prune(model, "magnitude", 0.5)
    unstructured = (layer.weight == 0).clone()
    sparsesearch.prune(model, "l1-filter", 0.3)
    rows_a = _zero_rows(layer.weight)
    assert int(rows_a.sum()) == 3
    # weights pruned before the channel step stay pruned: in the mask, not just by value
    assert bool((unstructured <= (get_mask(layer) == 0)).all())
    assert bool((unstructured <= (layer.weight == 0)).all())
    sparsesearch.prune(model, "l1-filter", 0.6)
    rows_b = _zero_rows(layer.weight)
    assert int(rows_b.sum()) == 6
    assert bool((rows_a <= rows_b).all())
    assert torch.equal(layer.bias == 0, rows_b)
    assert bool((unstructured <= (layer.weight == 0)).all())


# -- masks kept through training, copies and checkpoints -------------------------------------


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 16), nn.ReLU(),
        nn.Linear(16, 3),
    )


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _zero_sets(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: (m.weight == 0).clone() for n, m in masked_modules(model).items()}


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    model.train()
    for step in range(steps):
        x, y = _batch(step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("strategy", ["magnitude", "l1-filter"])
def test_masked_weights_stay_exactly_zero_through_user_training(strategy):
    model = _mlp()
    sparsesearch.prune(model, strategy, 0.5)
    zeros = _zero_sets(model)
    assert zeros and sum(int(z.sum()) for z in zeros.values()) > 0
    bias_zeros = {n: (m.bias == 0).clone() for n, m in masked_modules(model).items()}
    before = {n: m.weight.detach().clone() for n, m in masked_modules(model).items()}
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3), 5)
    _train(model, torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.5), 5)
    for name, module in masked_modules(model).items():
        w = module.weight.detach()
        assert torch.equal(w[zeros[name]], torch.zeros(int(zeros[name].sum())))
        # training did happen: the kept weights moved
        assert not torch.equal(w[~zeros[name]], before[name][~zeros[name]])
        if strategy == "l1-filter":
            assert bool((module.bias[bias_zeros[name]] == 0).all())


def test_deepcopy_keeps_masks():
    model = _mlp()
    sparsesearch.prune(model, "magnitude", 0.6)
    clone = copy.deepcopy(model)
    assert set(masked_modules(clone)) == set(masked_modules(model))
    for name, module in masked_modules(model).items():
        other = dict(clone.named_modules())[name]
        assert torch.equal(get_mask(other), get_mask(module))
        assert get_mask(other).data_ptr() != get_mask(module).data_ptr()  # a real copy
        assert torch.equal(other.weight, module.weight)
    zeros = _zero_sets(clone)
    _train(clone, torch.optim.SGD(clone.parameters(), lr=0.1, momentum=0.9), 3)
    for name, z in _zero_sets(clone).items():
        assert torch.equal(z | zeros[name], z)


@pytest.mark.parametrize("strategy", ["magnitude", "l1-filter"])
def test_state_dict_round_trip_through_torch_save(tmp_path, strategy):
    model = _mlp(seed=0)
    sparsesearch.prune(model, strategy, 0.5)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 2)
    path = tmp_path / "masked.pt"
    torch.save(model.state_dict(), path)
    sd = torch.load(path, weights_only=True)

    fresh = _mlp(seed=123)  # different weights, no masks
    assert not masked_modules(fresh)
    out = sparsesearch.load_masked_state_dict(fresh, sd)
    assert out is fresh
    assert set(masked_modules(fresh)) == set(masked_modules(model))
    modules = dict(model.named_modules())
    for name, module in masked_modules(fresh).items():
        assert torch.equal(module.weight, modules[name].weight)
        assert torch.equal(module.bias, modules[name].bias)
        assert torch.equal(get_mask(module), get_mask(modules[name]))
        if strategy == "l1-filter":
            assert torch.equal(get_mask(module, "bias"), get_mask(modules[name], "bias"))
    x, _ = _batch(99)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    # the loaded masks are live: training keeps the zeros
    zeros = _zero_sets(fresh)
    _train(fresh, torch.optim.AdamW(fresh.parameters(), lr=0.05, weight_decay=0.1), 2)
    for name, z in zeros.items():
        assert bool((dict(fresh.named_modules())[name].weight[z] == 0).all())


def test_load_masked_state_dict_rejects_mask_for_unknown_module():
    model = _mlp()
    sparsesearch.prune(model, "magnitude", 0.5)
    sd = {k.replace("5.parametrizations", "9.parametrizations"): v for k, v in model.state_dict().items()}
    with pytest.raises(SparsesearchError, match="'9'"):
        sparsesearch.load_masked_state_dict(_mlp(), sd)


def test_make_permanent_leaves_plain_parameters_with_the_zeros():
    model = _mlp()
    sparsesearch.prune(model, "l1-filter", 0.5)
    sparsesearch.prune(model, "magnitude", 0.7)
    zeros = _zero_sets(model)
    x, _ = _batch(5)
    model.eval()
    expected = model(x)
    out = sparsesearch.make_permanent(model)
    assert out is model
    assert not masked_modules(model)
    for name, module in model.named_modules():
        assert not parametrize.is_parametrized(module), name
        assert not is_masked(module)
    modules = dict(model.named_modules())
    for name, z in zeros.items():
        w = modules[name].weight
        assert type(w) is nn.Parameter
        assert torch.equal(w == 0, z)
    assert torch.equal(model(x), expected)
    assert all(".parametrizations." not in k for k in model.state_dict())
    # a plain dense state dict now: loads into a fresh model with load_state_dict
    fresh = _mlp(seed=7)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x), expected)


def test_copies_are_independent_of_the_original():
    """parametrize gives a deepcopy the same class; changing the copy's masks must not
    reach the original (nor the other way round)."""
    model = _mlp()
    sparsesearch.prune(model, "magnitude", 0.5)
    x, _ = _batch(3)
    model.eval()
    expected = model(x)

    exported = sparsesearch.make_permanent(copy.deepcopy(model))
    assert not masked_modules(exported)
    assert set(masked_modules(model)) == {"0", "3", "5"}
    assert torch.equal(model(x), expected)
    assert torch.equal(exported.eval()(x), expected)

    other = copy.deepcopy(model)
    sparsesearch.prune(other, "l1-filter", 0.5)  # adds bias masks to the copy only
    assert get_mask(model[0], "bias") is None
    assert torch.equal(model(x), expected)
    assert not torch.equal(other.eval()(x), expected)

    # and the original can still be changed without touching the copy
    before = other(x)
    sparsesearch.make_permanent(model)
    assert torch.equal(other(x), before)
    assert get_mask(other[0], "bias") is not None
