"""random: a seeded baseline; same seed, same mask; different seed, different mask."""

from __future__ import annotations

import torch
from torch import nn

import sparsesearch
from sparsesearch.masks import get_mask


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _masks(seed: int, amount: float = 0.5) -> dict[str, torch.Tensor]:
    model = _model()
    sparsesearch.prune(model, "random", amount, seed=seed)
    return {str(i): get_mask(model[i]).clone() for i in (0, 2, 4)}


def test_same_seed_same_mask():
    a = _masks(7)
    torch.manual_seed(999)  # the global RNG does not matter
    b = _masks(7)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_different_seed_different_mask():
    a, b = _masks(7), _masks(8)
    assert all(not torch.equal(a[n], b[n]) for n in a)


def test_exact_counts_and_layers_differ():
    masks = _masks(3, 0.3)
    assert int((masks["0"] == 0).sum()) == round(0.3 * 256)
    assert int((masks["4"] == 0).sum()) == round(0.3 * 64)
    # layers of the same shape get different masks (the generator mixes in the layer name)
    assert not torch.equal(masks["0"], masks["2"])


def test_random_ignores_the_weights_and_leaves_the_global_rng_alone():
    model = _model()
    other = _model()
    with torch.no_grad():
        other[0].weight.mul_(-3.0)
    state = torch.get_rng_state()
    sparsesearch.prune(model, "random", 0.5, seed=1)
    sparsesearch.prune(other, "random", 0.5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(get_mask(model[0]), get_mask(other[0]))


def test_not_correlated_with_magnitude():
    model = _model()
    w = model[0].weight.detach().abs().clone()
    sparsesearch.prune(model, "random", 0.5, seed=0)
    pruned = get_mask(model[0]) == 0
    smallest = torch.zeros(256, dtype=torch.bool)
    smallest[torch.argsort(w.flatten())[:128]] = True
    overlap = int((pruned.flatten() & smallest).sum())
    assert 40 < overlap < 90  # about half of 128, not all of it
