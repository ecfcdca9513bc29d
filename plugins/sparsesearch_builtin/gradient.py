"""``gradient``: |w · ∂L/∂w| (SNIP-style connection sensitivity, Lee et al. 2019).

The engine accumulates ∂L/∂w over ``num_batches`` training batches (averaged) and passes it
in the context; this strategy only multiplies.
"""

import torch

import sparsesearch


class Gradient(sparsesearch.Strategy):
    name = "gradient"
    granularity = "weight"
    requires_data = True
    description = "|w * dL/dw| accumulated over training batches (SNIP)"

    def score(self, layer: sparsesearch.Layer, context: sparsesearch.ScoreContext) -> torch.Tensor:
        grad = context.gradient(layer).to(layer.weight.device)
        return (layer.weight * grad).abs()


@sparsesearch.hookimpl
def sparsesearch_register_strategies(register):
    register(Gradient())
