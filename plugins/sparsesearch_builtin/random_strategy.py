"""``random``: seeded random scores, the sanity baseline (same seed, same mask)."""

import torch

import sparsesearch


class Random(sparsesearch.Strategy):
    name = "random"
    granularity = "weight"
    requires_data = False
    description = "uniform random scores, seeded"

    def score(self, layer: sparsesearch.Layer, context: sparsesearch.ScoreContext) -> torch.Tensor:
        gen = context.generator(layer)
        return torch.rand(layer.weight.shape, generator=gen).to(layer.weight.device)


@sparsesearch.hookimpl
def sparsesearch_register_strategies(register):
    register(Random())
