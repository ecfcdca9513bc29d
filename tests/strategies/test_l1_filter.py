"""l1-filter: removes the output channels with the smallest L1 norm, with their bias, never
the final layer's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch.errors import StrategyError


def _zero_channels(module: nn.Module) -> list[int]:
    rows = (module.weight.detach().flatten(1) == 0).all(1)
    return torch.nonzero(rows).flatten().tolist()


def test_prunes_smallest_l1_not_l2():
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([
            [3.0, 0.0, 0.0, 0.0],    # L1 3, L2 3
            [1.0, -1.0, 1.0, -1.0],  # L1 4, L2 2  (L2 would prune this one first)
            [5.0, 5.0, 0.0, 0.0],    # L1 10
            [-2.0, 2.0, 2.0, 2.0],   # L1 8, L2 4
        ]))
        layer.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    sparsesearch.prune(model, "l1-filter", 0.5)
    assert _zero_channels(layer) == [0, 1]
    assert layer.bias.detach().tolist() == [0.0, 0.0, 3.0, 4.0]
    assert _zero_channels(model[2]) == []


def test_conv_channels_with_known_norms():
    conv = nn.Conv2d(2, 6, 3)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(6, 3))
    norms = [6.0, 1.0, 4.0, 2.0, 5.0, 3.0]
    with torch.no_grad():
        for c, s in enumerate(norms):
            conv.weight[c].fill_(s / conv.weight[c].numel())
    sparsesearch.prune(model, "l1-filter", 0.5)
    assert _zero_channels(conv) == [1, 3, 5]
    assert (conv.bias.detach() == 0).nonzero().flatten().tolist() == [1, 3, 5]
    # the pruned channels output exactly zero before the non-linearity
    out = conv(torch.randn(2, 2, 3, 3))
    assert bool((out[:, [1, 3, 5]] == 0).all())
    assert bool((out[:, [0, 2, 4]] != 0).any())


def test_never_the_final_layers_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    sparsesearch.prune(model, "l1-filter", 0.9)
    assert len(_zero_channels(model[0])) == round(0.9 * 8)
    assert _zero_channels(model[2]) == []
    assert bool((model[2].bias != 0).all())
    with pytest.raises(StrategyError, match="output"):
        sparsesearch.prune(model, "l1-filter", {"2": 0.5})
    sparsesearch.prune(model, "l1-filter", 0.95, scope="global")
    assert _zero_channels(model[2]) == []


class _HeadFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)  # registered first, runs last
        self.body = nn.Linear(5, 8)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_the_output_layer_is_the_last_to_run_with_example_input():
    torch.manual_seed(1)
    model = _HeadFirst()
    sparsesearch.prune(model, "l1-filter", 0.5, example_input=torch.randn(2, 5))
    assert _zero_channels(model.head) == []
    assert len(_zero_channels(model.body)) == 4
