"""``l1-filter``: remove whole output channels with the smallest L1 norm (structured).

Li et al. 2017, "Pruning Filters for Efficient ConvNets". The engine removes the channel's
bias with it and never removes the output units of the model's final layer.
"""

import torch

import sparsesearch


class L1Filter(sparsesearch.Strategy):
    name = "l1-filter"
    granularity = "channel"
    requires_data = False
    description = "L1 norm of each output channel (filter)"

    def score(self, layer: sparsesearch.Layer, context: sparsesearch.ScoreContext) -> torch.Tensor:
        return layer.weight.abs().flatten(1).sum(dim=1)


@sparsesearch.hookimpl
def sparsesearch_register_strategies(register):
    register(L1Filter())
