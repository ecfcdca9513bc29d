"""compact(): channel-pruned models really shrink, compute exactly what the masked model
computes, and models that cannot be compacted fall back with a message naming the layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from compact_models import (
    ZOO,
    CatGroupNet,
    ChannelMean,
    HardCodedView,
    SENet,
    Untraceable,
    assert_consistent,
    prune_custom,
    pruned_model,
)
from torch import nn

import sparsesearch
from sparsesearch.compact import CompactionWarning, compact, compact_model, dependent_masks
from sparsesearch.masks import get_mask, masked_modules
from sparsesearch.models import build_model


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_compacted_zoo_models_are_equivalent_and_smaller(name, sparsity):
    model, x = pruned_model(name, sparsity)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompactionWarning)  # nothing blocked in these models
        result = compact(model, example_input=x)
    small = result.model
    assert not result.fallback and result.reason is None
    assert result.removed_channels > 0 and result.channels
    assert result.max_diff is not None and result.max_diff <= 1e-5
    # honest counts: the real smaller tensors
    real = sum(p.numel() for p in small.parameters())
    assert result.params_after == real == sparsesearch.count_params(small).total
    assert real < result.params_before == sum(p.numel() for p in model.parameters())
    assert_consistent(small)
    assert type(small) is type(model) or type(small).__bases__[0] is type(model)
    # equivalent on fresh inputs, batch > 1
    xs = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        ref, out = model(xs), small(xs)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    # the input model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_grouped_pruning_leaves_no_tied_channel_behind():
    model, x = pruned_model("cifar-resnet", 0.5)
    result = compact(model, example_input=x)
    assert not result.tied and not result.blocked


def test_compaction_reports_residual_ties_without_warning():
    model, x = pruned_model("cifar-resnet", 0.5, grouped=False)
    result = compact(model, example_input=x)
    assert result.tied and not result.blocked
    assert any("layer1.0.conv2" in line and "tied" in line for line in result.tied)
    # the tied channels stay masked in the compacted model (keep_masks=True)
    assert masked_modules(result.model)
    conv = dict(result.model.named_modules())["layer1.0.conv2"]
    assert bool((get_mask(conv) == 0).all(dim=(1, 2, 3)).any())


def test_keep_masks_false_gives_plain_modules():
    model, x = pruned_model("lenet5", 0.5)
    result = compact(model, example_input=x, keep_masks=False)
    assert not masked_modules(result.model)
    assert all(type(m).__name__ in {"LeNet5", "Sequential", "Conv2d", "MaxPool2d", "Flatten",
                                    "Linear", "ReLU"} for m in result.model.modules())
    assert isinstance(compact_model(model, example_input=x), nn.Module)


def test_lenet5_flatten_columns_follow_the_channels():
    model, x = pruned_model("lenet5", 0.5)
    small = compact(model, example_input=x).model
    conv2, fc1 = small.features[2], small.classifier[1]
    spatial = 4 * 4
    assert fc1.in_features == conv2.out_channels * spatial == 25 * spatial
    assert small.features[0].out_channels == conv2.in_channels == 10


def test_without_dependent_masks_batchnorm_shift_blocks_and_says_so():
    model, x = pruned_model("cifar-resnet", 0.5, dependent=False)
    with pytest.warns(CompactionWarning, match="dependent_masks"):
        result = compact(model, example_input=x)
    # every pruned channel of this all-BatchNorm model is blocked: masks are kept, never wrong
    assert result.fallback and result.model is model
    assert any("layer1.0.conv1" in b and "BatchNorm2d" in b for b in result.blocked)
    assert "layer 'layer1.0.bn1' (BatchNorm2d)" in result.reason


@pytest.mark.parametrize("cls", [CatGroupNet, SENet])
def test_concat_grouped_depthwise_se_and_shared_layers(cls):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = prune_custom(cls(), x)
    result = compact(model, example_input=x)
    assert not result.fallback and result.removed_channels > 0
    assert result.params_after < result.params_before
    assert_consistent(result.model)
    with torch.no_grad():
        xs = torch.randn(3, 3, 8, 8)
        assert torch.allclose(model(xs), result.model(xs), atol=1e-5)


def test_grouped_conv_stays_balanced():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = prune_custom(CatGroupNet(), x)
    g = compact(model, example_input=x).model.g
    assert g.groups == 2 and g.in_channels % 2 == 0 and g.out_channels % 2 == 0


def test_hard_coded_view_blocks_only_its_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    model = prune_custom(HardCodedView(), x)
    with pytest.warns(CompactionWarning, match=r"c2: 4 of 4 pruned channels kept .*view"):
        result = compact(model, example_input=x)
    assert not result.fallback
    assert result.model.c1.out_channels == 3 and result.model.c2.out_channels == 8
    assert any("hard-codes the flattened size 128" in b for b in result.blocked)
    assert any("compact_models.py" in b for b in result.blocked)  # the source line


def test_unsupported_op_on_the_only_pruned_layer_falls_back():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = prune_custom(ChannelMean(), x)
    with pytest.warns(CompactionWarning, match="keeping the masked model") as rec:
        result = compact(model, example_input=x)
    assert result.fallback and result.model is model
    assert "mean" in result.reason and "layer 'a'" not in result.reason
    assert result.reason.startswith("no pruned channel can be removed: a: ")
    assert "channel dimension" in str(rec[0].message)
    assert result.params_after == result.params_before


def test_untraceable_model_falls_back_naming_the_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = Untraceable()
    sparsesearch.prune(model, "l1-filter", 0.5, example_input=x)
    with pytest.warns(CompactionWarning, match="layer 'block' \\(Gate\\)"):
        result = compact(model, example_input=x)
    assert result.fallback and result.model is model
    assert "torch.fx cannot trace Untraceable" in result.reason
    assert "'block'" in result.reason
    with pytest.warns(CompactionWarning):
        assert dependent_masks(model, x) == {}


def test_dense_model_is_returned_as_is():
    model = build_model("lenet5").eval()
    result = compact(model, example_input=torch.randn(1, 1, 28, 28))
    assert result.model is model and not result.fallback and result.removed_channels == 0
