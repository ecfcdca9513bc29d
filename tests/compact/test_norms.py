"""dependent_masks: the BatchNorm after a masked channel is masked too, and the masking step
(apply_sparsity given the model) does it itself."""

from __future__ import annotations

import copy

import torch
from compact_models import ZOO, dense_model, pruned_model, warm_bn

import sparsesearch
from sparsesearch.compact import compact, dependent_masks
from sparsesearch.masks import get_mask
from sparsesearch.models import build_model
from sparsesearch.prune import apply_sparsity, resolve_sparsity
from sparsesearch.score import compute_scores


def test_dependent_masks_zero_the_batchnorm_of_pruned_channels():
    shape, _ = ZOO["cifar-resnet"]
    torch.manual_seed(0)
    model = build_model("cifar-resnet")
    warm_bn(model, shape)
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
    model, x = pruned_model("mobilenet_v2", 0.25, dependent=False)
    changed = dependent_masks(model, x)
    # BN after a depthwise conv is masked when the expansion channel feeding it was pruned
    assert "features.2.conv.1.1" in changed


def test_dependent_masks_without_example_input():
    shape, _ = ZOO["cifar-resnet"]
    torch.manual_seed(0)
    model = build_model("cifar-resnet")
    warm_bn(model, shape)
    layers = sparsesearch.find_layers(model)
    scores = compute_scores(model, layers, sparsesearch.get_strategy("l1-filter").strategy)
    apply_sparsity(layers, scores, resolve_sparsity(layers, 0.5, "channel"), "channel")
    changed = dependent_masks(model)  # shapes unknown: conv -> BatchNorm chains still found
    assert changed["layer1.0.bn1"] == 8
    result = compact(model.eval(), example_input=torch.randn(*shape))
    assert not result.fallback and result.params_after < result.params_before


def test_the_masking_step_masks_dependent_batchnorm_itself():
    dense, x = dense_model("cifar-resnet")
    strategy = sparsesearch.get_strategy("l1-filter").strategy
    scores = compute_scores(dense, sparsesearch.find_layers(dense, example_input=x), strategy)
    masked = {}
    for given in (True, False):
        model = copy.deepcopy(dense)
        layers = sparsesearch.find_layers(model, example_input=x)
        amounts = resolve_sparsity(layers, 0.5, "channel")
        kw = dict(model=model, example_input=x) if given else {}
        apply_sparsity(layers, scores, amounts, "channel", **kw)
        masked[given] = model
    bn, conv = masked[True].layer1[0].bn1, masked[True].layer1[0].conv1
    pruned = (get_mask(conv).flatten(1) == 0).all(1)
    assert torch.equal(get_mask(bn, "weight") == 0, pruned)  # masked with its filter
    assert dependent_masks(masked[True], x) == {}  # nothing left for the caller to do
    assert get_mask(masked[False].layer1[0].bn1, "weight") is None  # without the model: layers only
    assert dependent_masks(masked[False], x)["layer1.0.bn1"] == int(pruned.sum())
