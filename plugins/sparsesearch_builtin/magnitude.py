"""``magnitude``: keep the weights with the largest |w| (unstructured)."""

import torch

import sparsesearch


class Magnitude(sparsesearch.Strategy):
    name = "magnitude"
    granularity = "weight"
    requires_data = False
    description = "|w|: prune the smallest weights"

    def score(self, layer: sparsesearch.Layer, context: sparsesearch.ScoreContext) -> torch.Tensor:
        return layer.weight.abs()


@sparsesearch.hookimpl
def sparsesearch_register_strategies(register):
    register(Magnitude())
