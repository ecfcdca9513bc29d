"""Zero propagation: without shapes (ZeroAnalysis) zeros are followed as far as channel counts
can be read off the zeros; with them (ChannelAnalysis) through flatten too, and the same zeros
elsewhere."""

from __future__ import annotations

import torch
from compact_models import pruned_model

from sparsesearch.compact.channels import ChannelAnalysis
from sparsesearch.compact.ops import handler_for
from sparsesearch.compact.propagate import ZeroAnalysis
from sparsesearch.compact.trace import record_shapes, trace
from sparsesearch.masks import get_mask


def test_zeros_follow_masked_channels_with_and_without_shapes():
    model, x = pruned_model("lenet5", 0.5)  # conv, pool, conv, pool; flatten, linear, relu, linear
    gm = trace(model)
    modules = dict(model.named_modules())
    nodes = {n.name: n for n in gm.graph.nodes}
    pruned = (get_mask(model.features[2]).flatten(1) == 0).all(1)
    assert 0 < int(pruned.sum()) < pruned.numel()

    free = ZeroAnalysis(gm, modules, rules=handler_for)
    shaped = ChannelAnalysis(gm, modules, record_shapes(gm, x), rules=handler_for)
    conv, pool, flat = nodes["features_2"], nodes["features_3"], nodes["classifier_0"]
    for a in (free, shaped):
        assert torch.equal(a.zero[conv], pruned)  # the conv's masked rows
        assert torch.equal(a.zero[pool], pruned)  # through max pooling
    assert free.zero[flat] is None  # the spatial size is unknown without shapes
    assert torch.equal(shaped.zero[flat], pruned.repeat_interleave(4 * 4))  # channel x 4 x 4 columns
    # only the shaped analysis records channel classes: flatten ties column c*16+p to channel c
    assert not hasattr(free, "base")
    b_flat, b_pool = shaped.base[flat], shaped.base[pool]
    assert shaped.find(b_flat + 5 * 16 + 3) == shaped.find(b_pool + 5)
