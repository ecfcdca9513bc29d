"""Models and helpers shared by the tests of ``sparsesearch.compact`` (not a test module)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import sparsesearch
from sparsesearch.compact import dependent_masks
from sparsesearch.models import build_model
from sparsesearch.prune import apply_sparsity, resolve_sparsity
from sparsesearch.score import compute_scores

ZOO = {
    "lenet5": ((1, 1, 28, 28), {}),
    "cifar-resnet": ((1, 3, 32, 32), {}),
    "resnet18": ((1, 3, 32, 32), {"num_classes": 10}),
    "mobilenet_v2": ((1, 3, 32, 32), {"num_classes": 10}),
}


def warm_bn(model: nn.Module, shape, steps: int = 2) -> None:
    """Non-trivial BatchNorm running statistics: a few train-mode forwards."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(4, *shape[1:]) * 2 + 0.5)
    model.eval()


def dense_model(name: str):
    """A zoo model (seed 0) with warmed-up BatchNorm statistics, and an input batch."""
    shape, kwargs = ZOO[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    warm_bn(model, shape)
    return model, torch.randn(*shape)


def pruned_model(name: str, sparsity: float, *, dependent: bool = True, grouped: bool = True):
    model, x = dense_model(name)
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


def assert_consistent(model: nn.Module) -> None:
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


def prune_custom(model, x, sparsity=0.5, **kwargs):
    torch.manual_seed(1)
    warm_bn(model, x.shape, steps=2)
    sparsesearch.prune(model, "l1-filter", sparsity, example_input=x, **kwargs)
    dependent_masks(model, x)
    return model.eval()
