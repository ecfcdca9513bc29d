"""magnitude: prunes exactly the weights with the smallest |w|, sign ignored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsesearch


def _pruned(weight: torch.Tensor) -> set[int]:
    return set(torch.nonzero(weight.detach().flatten() == 0).flatten().tolist())


@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5, 0.8])
def test_prunes_exactly_the_smallest_absolute_values(amount):
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(8, 6)
    n = layer.weight.numel()
    # distinct magnitudes in a random order, random signs: large negatives must survive
    magnitudes = (torch.randperm(n, generator=g).float() + 1) / n
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        layer.weight.copy_((magnitudes * signs).view_as(layer.weight))
    sparsesearch.prune(layer, "magnitude", amount)
    k = round(amount * n)
    expected = set(torch.argsort(magnitudes)[:k].tolist())
    assert _pruned(layer.weight) == expected
    kept = sorted(set(range(n)) - expected)
    assert magnitudes[kept].min() > magnitudes[sorted(expected)].max()
    assert torch.equal(layer.weight.detach().flatten()[kept], (magnitudes * signs)[kept])


def test_conv_layers_and_per_layer_amounts():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(4, 2))
    original = {i: model[i].weight.detach().clone() for i in (0, 2, 4)}
    amounts = {"0": 0.25, "2": 0.5, "4": 0.0}
    sparsesearch.prune(model, "magnitude", amounts)
    for i, w in original.items():
        k = round(amounts[str(i)] * w.numel())
        expected = set(torch.argsort(w.abs().flatten(), stable=True)[:k].tolist())
        assert _pruned(model[i].weight) == expected, i


def test_magnitude_is_weight_granularity_and_leaves_biases():
    torch.manual_seed(2)
    layer = nn.Linear(5, 5)
    bias = layer.bias.detach().clone()
    sparsesearch.prune(layer, "magnitude", 0.6)
    assert torch.equal(layer.bias.detach(), bias)
    rows = (layer.weight.detach() == 0).all(1)
    assert int((layer.weight == 0).sum()) == 15
    assert not rows.all()
