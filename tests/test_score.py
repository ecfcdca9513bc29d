"""The score step: gradients accumulated exactly, from every accepted kind of data, on a copy
of the model (which is left untouched), deterministically for a seed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsesearch
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.masks import get_mask
from sparsesearch.score import accumulate_gradients, compute_scores


def _mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3)
    )


def _batches(n: int = 3, size: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _manual_mean_gradients(model, batches):
    work = copy.deepcopy(model).train()
    sums = {n: torch.zeros_like(m.weight) for n, m in work.named_modules() if isinstance(m, nn.Linear)}
    for x, y in batches:
        work.zero_grad()
        nn.functional.cross_entropy(work(x), y).backward()
        for n in sums:
            sums[n] += dict(work.named_modules())[n].weight.grad
    return {n: s / len(batches) for n, s in sums.items()}


def test_gradients_are_the_mean_over_the_first_num_batches():
    model = _mlp()
    batches = _batches(3)
    layers = find_layers(model)
    fields = accumulate_gradients(model, layers, batches, num_batches=2)
    assert fields["num_batches"] == 2
    expected = _manual_mean_gradients(model, batches[:2])
    for name in ("0", "4"):
        assert torch.allclose(fields["gradients"][name], expected[name], atol=1e-6)
        assert fields["gradient_squares"][name].shape == expected[name].shape
        assert fields["taylor"][name].shape == (expected[name].shape[0],)
        assert bool((fields["gradient_squares"][name] >= 0).all())
    # fewer batches than asked: uses what there is
    assert accumulate_gradients(model, layers, batches, num_batches=10)["num_batches"] == 3


def _same(a, b):
    return all(torch.allclose(a["gradients"][n], b["gradients"][n], atol=1e-6) for n in a["gradients"])


def test_every_kind_of_batch_iterable_gives_the_same_gradients():
    model = _mlp()
    layers = find_layers(model)
    two = _batches(2)  # a list of exactly two batches is batches, not (train, val) splits
    reference = accumulate_gradients(model, layers, two, num_batches=8)
    assert reference["num_batches"] == 2
    x = torch.cat([b[0] for b in two])
    y = torch.cat([b[1] for b in two])
    forms = {
        "tuple": tuple(two),
        "generator": (b for b in two),
        "lists": [[bx, by] for bx, by in two],
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=6, shuffle=False),
    }
    for label, data in forms.items():
        got = accumulate_gradients(model, layers, data, num_batches=8)
        assert got["num_batches"] == 2, label
        assert _same(got, reference), label
    # a single (x, y) pair is one batch
    one = accumulate_gradients(model, layers, two[0], num_batches=8)
    assert one["num_batches"] == 1
    assert _same(one, accumulate_gradients(model, layers, [two[0]]))


def test_torch_datasets_are_batched_with_a_seeded_shuffle():
    pytest.importorskip("sparsesearch.train")
    model = _mlp()
    layers = find_layers(model)
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g))
    val = TensorDataset(torch.randn(10, 5), torch.randint(0, 3, (10,)))
    a = accumulate_gradients(model, layers, train, num_batches=2, batch_size=8, seed=3)
    b = accumulate_gradients(model, layers, train, num_batches=2, batch_size=8, seed=3)
    c = accumulate_gradients(model, layers, (train, val), num_batches=2, batch_size=8, seed=3)
    d = accumulate_gradients(model, layers, train, num_batches=2, batch_size=8, seed=4)
    assert a["num_batches"] == 2
    assert _same(a, b) and _same(a, c)
    assert not _same(a, d)


def test_scoring_leaves_model_and_global_rng_untouched():
    model = _mlp(dropout=0.5)
    sparsesearch.prune(model, "magnitude", 0.5)
    model.eval()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    layers = find_layers(model)
    compute_scores(model, layers, sparsesearch.get_strategy("gradient").strategy, data=_batches(2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # weights, masks and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())


def test_gradient_scores_are_deterministic_with_dropout():
    model = _mlp(dropout=0.5)
    layers = find_layers(model)
    strategy = sparsesearch.get_strategy("gradient").strategy
    a = compute_scores(model, layers, strategy, data=_batches(2), seed=5)
    torch.manual_seed(12345)  # the caller's RNG state does not matter
    b = compute_scores(model, layers, strategy, data=_batches(2), seed=5)
    c = compute_scores(model, layers, strategy, data=_batches(2), seed=6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_scores_have_the_right_shapes_on_the_cpu():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3))
    layers = find_layers(model)
    for name, shape0 in (("magnitude", None), ("l1-filter", "channel")):
        scores = compute_scores(model, layers, sparsesearch.get_strategy(name).strategy)
        for layer in layers:
            s = scores[layer.name]
            assert s.device.type == "cpu"
            expected = (layer.out_channels,) if shape0 else tuple(layer.weight.shape)
            assert tuple(s.shape) == expected


def test_gradients_are_taken_at_the_effective_weights():
    model = _mlp()
    sparsesearch.prune(model, "magnitude", 0.5)
    mask = get_mask(model[0]).clone()
    sparsesearch.prune(model, "gradient", 0.7, data=_batches(2))
    # the magnitude zeros are still pruned, and exactly round(0.7 n) are pruned now
    assert bool(((mask == 0) <= (model[0].weight == 0)).all())
    assert int((model[0].weight == 0).sum()) == round(0.7 * 40)


@pytest.mark.parametrize(
    "data, match",
    [
        (42, "data must be"),
        ([], "no training batches"),
        ([(torch.randn(2, 5), torch.tensor([0, 1]), torch.zeros(2))], "batch 0"),
        ([torch.randn(2, 5)], "batch 0"),
    ],
)
def test_bad_data(data, match):
    model = _mlp()
    with pytest.raises(SparsesearchError, match=match):
        sparsesearch.prune(model, "gradient", 0.5, data=data)


def test_bad_num_batches():
    with pytest.raises(SparsesearchError, match="num_batches"):
        sparsesearch.prune(_mlp(), "gradient", 0.5, data=_batches(1), num_batches=0)


def test_non_finite_loss():
    x, y = _batches(1)[0]
    with pytest.raises(SparsesearchError, match="non-finite loss"):
        sparsesearch.prune(_mlp(), "gradient", 0.5, data=[(x * float("nan"), y)])
