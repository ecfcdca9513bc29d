"""gradient: |w · ∂L/∂w| keeps the weights that matter for the loss, even small ones, and
drops large weights on inputs that carry nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsesearch
from sparsesearch.errors import StrategyError
from sparsesearch.strategy import Layer, ScoreContext


def _data(n: int = 64, seed: int = 0):
    """Feature 0 is always 0; feature 1 decides the class."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 2)
    x[:, 1] = torch.randn(n, generator=g)
    y = (x[:, 1] > 0).long()
    return x, y


def _model() -> nn.Linear:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        # large weights on the dead feature, small ones on the informative feature
        layer.weight.copy_(torch.tensor([[5.0, -0.1], [-4.0, 0.1]]))
    return layer


def _accuracy_and_loss(model, x, y):
    with torch.no_grad():
        logits = model(x)
    return float((logits.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


def _batches(x, y, size=16):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("form", ["list", "dataloader", "dataset"])
def test_gradient_keeps_the_small_weight_that_matters(form):
    x, y = _data()
    if form == "list":
        data = _batches(x, y)
    elif form == "dataloader":
        data = DataLoader(TensorDataset(x, y), batch_size=16)
    else:
        pytest.importorskip("sparsesearch.train")
        data = TensorDataset(x, y)

    by_gradient = sparsesearch.prune(_model(), "gradient", 0.5, data=data, batch_size=16)
    by_magnitude = sparsesearch.prune(_model(), "magnitude", 0.5)

    g_zero = (by_gradient.weight.detach() == 0)
    m_zero = (by_magnitude.weight.detach() == 0)
    # magnitude drops the informative column (the two small weights) ...
    assert m_zero.tolist() == [[False, True], [False, True]]
    # ... gradient drops the dead column and keeps the informative one
    assert g_zero.tolist() == [[True, False], [True, False]]

    acc_g, loss_g = _accuracy_and_loss(by_gradient, x, y)
    acc_m, loss_m = _accuracy_and_loss(by_magnitude, x, y)
    assert acc_g == 1.0
    assert acc_m < 0.75
    assert loss_g < loss_m


def test_gradient_scores_are_w_times_mean_gradient():
    x, y = _data()
    model = _model()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = (model.weight.detach() * model.weight.grad).abs()
    context = ScoreContext(gradients={"": model.weight.grad.clone()})
    strategy = sparsesearch.get_strategy("gradient").strategy
    layer = Layer("", model, model.weight.detach(), True)
    assert torch.allclose(strategy.score(layer, context), expected)
    assert bool((expected[:, 0] == 0).all())  # the dead input has zero gradient


def test_gradient_needs_data():
    with pytest.raises(StrategyError, match="'gradient' needs data"):
        sparsesearch.prune(_model(), "gradient", 0.5)


def test_gradient_uses_num_batches():
    x, y = _data(64)
    # the first batch alone: the informative feature is still what matters
    model = sparsesearch.prune(_model(), "gradient", 0.5, data=_batches(x, y), num_batches=1)
    assert (model.weight.detach() == 0).tolist() == [[True, False], [True, False]]
