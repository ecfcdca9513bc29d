"""find_layers: which layers are prunable, their order, and which one is the output layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers, layer_names


class _Shuffled(nn.Module):
    """Registration order (head, conv, fc) differs from execution order (conv, fc, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 8)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head(torch.relu(self.fc(x)))


def test_prunable_types_and_registration_order():
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(8, 5),
        nn.LayerNorm(5), nn.Embedding(3, 5), nn.Linear(5, 2),
    )
    layers = find_layers(model)
    assert [layer.name for layer in layers] == ["0", "4", "7"]
    assert [layer.is_output for layer in layers] == [False, False, True]
    for layer in layers:
        assert layer.module is model[int(layer.name)]
        assert torch.equal(layer.weight, layer.module.weight)
        assert not layer.weight.requires_grad
        assert layer.out_channels == layer.module.weight.shape[0]
        assert torch.equal(layer.bias, layer.module.bias)


def test_all_conv_dims_and_grouped_conv_are_prunable():
    model = nn.Sequential(nn.Conv1d(1, 2, 1), nn.Conv2d(2, 4, 1, groups=2), nn.Conv3d(4, 4, 1), nn.Linear(1, 1))
    assert layer_names(model) == ["0", "1", "2", "3"]


def test_execution_order_with_example_input():
    model = _Shuffled()
    assert layer_names(model) == ["head", "conv", "fc"]
    assert [l.is_output for l in find_layers(model)] == [False, False, True]  # last registered
    x = torch.randn(2, 1, 6, 6)
    model.train()
    layers = find_layers(model, example_input=x)
    assert [layer.name for layer in layers] == ["conv", "fc", "head"]
    assert [layer.is_output for layer in layers] == [False, False, True]
    assert model.training  # mode restored
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_include_and_exclude_patterns():
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)))
    model.add_module("classifier", nn.Sequential(nn.Flatten(), nn.Linear(2, 2)))
    assert layer_names(model) == ["features.0", "features.1", "classifier.1"]
    assert layer_names(model, include=["features.*"]) == ["features.0", "features.1"]
    assert layer_names(model, exclude=["*.1"]) == ["features.0"]
    # the output layer is the model's, even when it is excluded
    assert not any(l.is_output for l in find_layers(model, include=["features.*"]))


def test_a_bare_layer_is_its_own_output_layer():
    layer = nn.Linear(3, 2)
    layers = find_layers(layer)
    assert [(l.name, l.is_output) for l in layers] == [("", True)]


def test_no_prunable_layers():
    with pytest.raises(SparsesearchError, match="no prunable layers"):
        find_layers(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(SparsesearchError, match="no prunable layers"):
        find_layers(nn.Sequential(nn.Linear(2, 2)), include=["nothing*"])


def test_masked_layers_are_still_found_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    sparsesearch.prune(model, "l1-filter", 0.5)
    layers = find_layers(model)
    assert [l.name for l in layers] == ["0", "2"]
    # the layer's weight is the effective (masked) weight
    assert int((layers[0].weight.flatten(1) == 0).all(1).sum()) == 2
