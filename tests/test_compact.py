"""compact(): channel-pruned models really shrink, compute exactly what the masked model
computes, and models that cannot be compacted fall back with a message naming the layer."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsesearch
from sparsesearch.prune import apply_sparsity, resolve_sparsity
from sparsesearch.score import compute_scores
from sparsesearch.compact import (
    CompactionError,
    CompactionWarning,
    compact,
    compact_model,
    dependent_masks,
)
from sparsesearch.masks import get_mask, masked_modules
from sparsesearch.models import build_model

compact_mod = importlib.import_module("sparsesearch.compact.surgery")  # where _param_like is used

ZOO = {
    "lenet5": ((1, 1, 28, 28), {}),
    "cifar-resnet": ((1, 3, 32, 32), {}),
    "resnet18": ((1, 3, 32, 32), {"num_classes": 10}),
    "mobilenet_v2": ((1, 3, 32, 32), {"num_classes": 10}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: small models run faster and stay fast on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _warm_bn(model: nn.Module, shape, steps: int = 2) -> None:
    """Non-trivial BatchNorm running statistics: a few train-mode forwards."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(4, *shape[1:]) * 2 + 0.5)
    model.eval()


def _pruned(name: str, sparsity: float, *, dependent: bool = True, grouped: bool = True):
    shape, kwargs = ZOO[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    _warm_bn(model, shape)
    x = torch.randn(*shape)
    if dependent and grouped:  # prune() masks the BatchNorm of pruned channels itself
        sparsesearch.prune(model, "l1-filter", sparsity, example_input=x)
        assert dependent_masks(model, x) == {}
    elif dependent:  # every layer masked on its own: tied channels are not aligned
        layers = sparsesearch.find_layers(model, example_input=x)
        scores = compute_scores(model, layers, sparsesearch.get_strategy("l1-filter").strategy)
        amounts = resolve_sparsity(layers, sparsity, "channel")
        apply_sparsity(layers, scores, amounts, "channel", groups=False)
        dependent_masks(model, x)
        assert dependent_masks(model, x) == {}
    else:  # the engine's lower-level steps, without dependent_masks
        layers = sparsesearch.find_layers(model, example_input=x)
        scores = compute_scores(model, layers, sparsesearch.get_strategy("l1-filter").strategy)
        apply_sparsity(layers, scores, resolve_sparsity(layers, sparsity, "channel"), "channel")
    model.eval()
    return model, x


def _assert_consistent(model: nn.Module) -> None:
    """Module attributes agree with the real (smaller) tensors."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels, name
            assert m.weight.shape[1] == m.in_channels // m.groups, name
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
            if m.bias is not None:
                assert m.bias.shape == (m.out_channels,), name
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
        elif isinstance(m, nn.BatchNorm2d):
            assert m.weight.shape == m.bias.shape == m.running_mean.shape == (m.num_features,)


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_compacted_zoo_models_are_equivalent_and_smaller(name, sparsity):
    model, x = _pruned(name, sparsity)
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
    _assert_consistent(small)
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
    model, x = _pruned("cifar-resnet", 0.5)
    result = compact(model, example_input=x)
    assert not result.tied and not result.blocked


def test_compaction_reports_residual_ties_without_warning():
    model, x = _pruned("cifar-resnet", 0.5, grouped=False)
    result = compact(model, example_input=x)
    assert result.tied and not result.blocked
    assert any("layer1.0.conv2" in line and "tied" in line for line in result.tied)
    # the tied channels stay masked in the compacted model (keep_masks=True)
    assert masked_modules(result.model)
    conv = dict(result.model.named_modules())["layer1.0.conv2"]
    assert bool((get_mask(conv) == 0).all(dim=(1, 2, 3)).any())


def test_keep_masks_false_gives_plain_modules():
    model, x = _pruned("lenet5", 0.5)
    result = compact(model, example_input=x, keep_masks=False)
    assert not masked_modules(result.model)
    assert all(type(m).__name__ in {"LeNet5", "Sequential", "Conv2d", "MaxPool2d", "Flatten",
                                    "Linear", "ReLU"} for m in result.model.modules())
    assert isinstance(compact_model(model, example_input=x), nn.Module)


def test_lenet5_flatten_columns_follow_the_channels():
    model, x = _pruned("lenet5", 0.5)
    small = compact(model, example_input=x).model
    conv2, fc1 = small.features[2], small.classifier[1]
    spatial = 4 * 4
    assert fc1.in_features == conv2.out_channels * spatial == 25 * spatial
    assert small.features[0].out_channels == conv2.in_channels == 10


def test_without_dependent_masks_batchnorm_shift_blocks_and_says_so():
    model, x = _pruned("cifar-resnet", 0.5, dependent=False)
    with pytest.warns(CompactionWarning, match="dependent_masks"):
        result = compact(model, example_input=x)
    # every pruned channel of this all-BatchNorm model is blocked: masks are kept, never wrong
    assert result.fallback and result.model is model
    assert any("layer1.0.conv1" in b and "BatchNorm2d" in b for b in result.blocked)
    assert "layer 'layer1.0.bn1' (BatchNorm2d)" in result.reason


def test_dependent_masks_zero_the_batchnorm_of_pruned_channels():
    shape, _ = ZOO["cifar-resnet"]
    torch.manual_seed(0)
    model = build_model("cifar-resnet")
    _warm_bn(model, shape)
    x = torch.randn(*shape)
    changed = {}
    sparsesearch.prune(model, "l1-filter", 0.5, example_input=x)  # calls dependent_masks
    assert dependent_masks(model, x) == changed
    assert int((get_mask(model.layer1[0].bn1, "weight") == 0).sum()) == 8  # half of 16 channels
    bn = model.layer1[0].bn1
    pruned = (get_mask(model.layer1[0].conv1).flatten(1) == 0).all(1)
    assert torch.equal(get_mask(bn, "weight") == 0, pruned)
    assert torch.equal(get_mask(bn, "bias") == 0, pruned)
    # the pruned channels are now exactly zero after the BatchNorm, in eval and train mode
    for train in (False, True):
        model.train(train)
        out = {}
        h = bn.register_forward_hook(lambda m, i, o: out.setdefault("y", o))
        with torch.no_grad():
            model(torch.randn(4, *shape[1:]))
        h.remove()
        assert bool((out["y"][:, pruned] == 0).all())
    assert dependent_masks(model, x) == {}  # idempotent


def test_dependent_masks_follow_depthwise_chains():
    model, x = _pruned("mobilenet_v2", 0.25, dependent=False)
    changed = dependent_masks(model, x)
    # BN after a depthwise conv is masked when the expansion channel feeding it was pruned
    assert "features.2.conv.1.1" in changed


# ---- unusual structure ----------------------------------------------------------------------


class CatGroupNet(nn.Module):
    """Concatenation, a grouped conv, a depthwise conv with channel multiplier 2, flatten."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(14)
        self.g = nn.Conv2d(14, 8, 3, padding=1, groups=2)
        self.d = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = F.relu(self.bn(y))
        y = F.max_pool2d(self.g(y), 2)
        y = F.relu(self.d(y))
        return self.fc(y.flatten(1))


class SENet(nn.Module):
    """Squeeze-excitation multiply, and one conv applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.f1 = nn.Conv2d(16, 4, 1)
        self.f2 = nn.Conv2d(4, 16, 1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.a(x)))
        w = torch.sigmoid(self.f2(F.relu(self.f1(F.adaptive_avg_pool2d(y, 1)))))
        y = self.shared(F.relu(self.shared(y * w)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3)
        self.c2 = nn.Conv2d(6, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        y = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(y.view(-1, 8 * 4 * 4))


class ChannelMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        y = y * y.mean(1, keepdim=True)  # mixes channels: removing one changes the others
        return self.fc(y.mean((2, 3)))


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # data-dependent control flow: fx cannot trace


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.block = Gate()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.block(self.a(x)).mean((2, 3)))


def _prune_custom(model, x, sparsity=0.5, **kwargs):
    torch.manual_seed(1)
    _warm_bn(model, x.shape, steps=2)
    sparsesearch.prune(model, "l1-filter", sparsity, example_input=x, **kwargs)
    dependent_masks(model, x)
    return model.eval()


@pytest.mark.parametrize("cls", [CatGroupNet, SENet])
def test_concat_grouped_depthwise_se_and_shared_layers(cls):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = _prune_custom(cls(), x)
    result = compact(model, example_input=x)
    assert not result.fallback and result.removed_channels > 0
    assert result.params_after < result.params_before
    _assert_consistent(result.model)
    with torch.no_grad():
        xs = torch.randn(3, 3, 8, 8)
        assert torch.allclose(model(xs), result.model(xs), atol=1e-5)


def test_grouped_conv_stays_balanced():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = _prune_custom(CatGroupNet(), x)
    g = compact(model, example_input=x).model.g
    assert g.groups == 2 and g.in_channels % 2 == 0 and g.out_channels % 2 == 0


def test_hard_coded_view_blocks_only_its_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    model = _prune_custom(HardCodedView(), x)
    with pytest.warns(CompactionWarning, match=r"c2: 4 of 4 pruned channels kept .*view"):
        result = compact(model, example_input=x)
    assert not result.fallback
    assert result.model.c1.out_channels == 3 and result.model.c2.out_channels == 8
    assert any("hard-codes the flattened size 128" in b for b in result.blocked)
    assert any("test_compact.py" in b for b in result.blocked)  # the source line


def test_unsupported_op_on_the_only_pruned_layer_falls_back():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = _prune_custom(ChannelMean(), x)
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


def test_mismatch_raises_naming_the_layer_group(monkeypatch):
    model, x = _pruned("lenet5", 0.5)
    real = compact_mod._param_like

    def broken(old, new):
        p = real(old, new)
        if p.dim() == 4 and p.shape[0] != p.shape[1]:  # corrupt a resized conv
            with torch.no_grad():
                p.add_(0.5)
        return p

    monkeypatch.setattr(compact_mod, "_param_like", broken)
    with pytest.raises(CompactionError, match=r"first at layer 'features\.0' .*layer group: features\.0"):
        compact(model, example_input=x)


def test_check_false_skips_the_equivalence_run():
    model, x = _pruned("lenet5", 0.25)
    result = compact(model, example_input=x, check=False)
    assert result.max_diff is None and not result.fallback


def test_compacted_model_that_fails_to_run_falls_back(monkeypatch):
    model, x = _pruned("lenet5", 0.5)
    real = compact_mod._param_like

    def wrong_shape(old, new):
        p = real(old, new)
        return nn.Parameter(p[:, :-1].clone()) if p.dim() == 2 else p  # Linear loses a column

    monkeypatch.setattr(compact_mod, "_param_like", wrong_shape)
    with pytest.warns(CompactionWarning, match="fails to run"):
        result = compact(model, example_input=x)
    assert result.fallback and result.model is model
    assert "classifier.1" in result.reason


def test_dependent_masks_without_example_input():
    shape, _ = ZOO["cifar-resnet"]
    torch.manual_seed(0)
    model = build_model("cifar-resnet")
    _warm_bn(model, shape)
    layers = sparsesearch.find_layers(model)
    scores = compute_scores(model, layers, sparsesearch.get_strategy("l1-filter").strategy)
    apply_sparsity(layers, scores, resolve_sparsity(layers, 0.5, "channel"), "channel")
    changed = dependent_masks(model)  # shapes unknown: conv -> BatchNorm chains still found
    assert changed["layer1.0.bn1"] == 8
    result = compact(model.eval(), example_input=torch.randn(*shape))
    assert not result.fallback and result.params_after < result.params_before


def test_wrong_example_input_is_a_clear_error():
    model, _ = _pruned("lenet5", 0.5)
    with pytest.raises(sparsesearch.SparsesearchError, match="fails on example_input of shape"):
        compact(model, example_input=torch.randn(1, 3, 32, 32))
