"""count_macs(): hand-computed Linear / Conv cases, batch independence, compacted models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch.compact import compact
from sparsesearch.macs import count_macs, layer_macs
from sparsesearch.masks import apply_mask
from sparsesearch.models import build_model


def test_linear_is_out_times_in():
    assert count_macs(nn.Linear(7, 3), torch.randn(1, 7)) == 21
    # applied at every position of a (batch, L, features) input
    assert count_macs(nn.Linear(7, 3), torch.randn(2, 5, 7)) == 5 * 21


def test_conv_is_output_elements_times_in_per_group_times_kernel():
    # 3->8, 3x3, padding 1 on 10x10: out 8x10x10, each 3*9 MACs
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 10, 10)) == 8 * 100 * 27
    # stride 2, no padding: out (10-3)//2+1 = 4 -> 8x4x4
    assert count_macs(nn.Conv2d(3, 8, 3, stride=2), torch.randn(1, 3, 10, 10)) == 8 * 16 * 27
    # grouped: 4 groups of 8->4 channels, 1x1 on 5x5
    assert count_macs(nn.Conv2d(32, 16, 1, groups=4), torch.randn(1, 32, 5, 5)) == 16 * 25 * 8
    # depthwise 3x3 with dilation 2, padding 2 on 6x6 keeps 6x6
    assert count_macs(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4), torch.randn(1, 4, 6, 6)) == 4 * 36 * 9
    # Conv1d, kernel 3 on length 10 -> 8 positions
    assert count_macs(nn.Conv1d(2, 5, 3), torch.randn(1, 2, 10)) == 5 * 8 * 6


def test_batch_independent_and_sums_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    one = count_macs(model, torch.randn(1, 1, 6, 6))
    assert one == 2 * 16 * 9 + 32 * 3
    assert count_macs(model, torch.randn(64, 1, 6, 6)) == one
    assert layer_macs(model, torch.randn(3, 1, 6, 6)) == {"0": 2 * 16 * 9, "3": 32 * 3}


def test_a_layer_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert count_macs(Twice(), torch.randn(2, 4)) == 32


def test_lenet5_dense_count():
    # conv1 20x24x24 x 1x25, conv2 50x8x8 x 20x25, fc 800x500, fc 500x10
    expected = 20 * 576 * 25 + 50 * 64 * 500 + 800 * 500 + 500 * 10
    assert count_macs(build_model("lenet5"), torch.randn(1, 1, 28, 28)) == expected


def test_masks_do_not_change_the_count_but_compaction_does():
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    dense = count_macs(model, x)
    sparsesearch.prune(model, "l1-filter", 0.5, example_input=x)
    assert count_macs(model, x) == dense  # masks alone remove nothing
    result = compact(model, example_input=x)
    compacted = count_macs(result, x)  # a CompactResult is accepted
    assert compacted == count_macs(result.model, x)
    # conv1 10 ch, conv2 25 ch (of 10 inputs), fc1 250 of 400 inputs, fc2 of 250 inputs
    assert compacted == 10 * 576 * 25 + 25 * 64 * 250 + 400 * 250 + 250 * 10
    assert compacted < dense


def test_nonzero_counts_only_unmasked_weights():
    lin = nn.Linear(4, 3)
    mask = torch.ones(3, 4)
    mask[0, :2] = 0
    apply_mask(lin, mask)
    assert count_macs(lin, torch.randn(1, 4)) == 12
    assert count_macs(lin, torch.randn(1, 4), nonzero=True) == 10
    conv = nn.Conv2d(1, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    assert count_macs(conv, torch.randn(1, 1, 5, 5), nonzero=True) == 9  # 3x3 outputs x 1 weight


def test_training_mode_is_restored_and_bad_input_is_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    count_macs(model, torch.randn(1, 3))
    assert model.training
    with pytest.raises(TypeError):
        count_macs("lenet5", torch.randn(1, 3))
