"""``taylor``: first-order Taylor channel importance (Molchanov et al. 2019), a sparsesearch plugin.

Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network Pruning",
CVPR 2019: removing output channel ``c`` changes the loss by about ``Σ_{s∈c} w_s·∂L/∂w_s``
(first-order Taylor expansion over the channel's weights), so its importance is that sum,
squared, accumulated over training batches::

    I(c) = Σ_batches ( Σ_{s ∈ filter c} w_s · ∂L/∂w_s )²

The engine computes exactly this while it accumulates gradients (``requires_data = True``) and
hands it over as ``context.taylor[layer.name]`` (shape ``(out_channels,)``); the strategy only
returns it. Channels with the smallest importance are removed, with their bias; the model's
output units are never removed.
"""

from __future__ import annotations

import torch

import sparsesearch

__version__ = "0.1.0"
__all__ = ["Taylor"]


class Taylor(sparsesearch.Strategy):
    name = "taylor"
    granularity = "channel"
    requires_data = True
    description = "first-order Taylor importance of each output channel (Molchanov et al. 2019)"

    def score(self, layer: sparsesearch.Layer, context: sparsesearch.ScoreContext) -> torch.Tensor:
        try:
            importance = context.taylor[layer.name]
        except KeyError:
            raise ValueError(
                f"no Taylor importance for layer {layer.name!r}: the engine computes it only "
                "for strategies with requires_data = True, when prune()/search() get data"
            ) from None
        # a copy: the context's tensors are shared and must stay untouched
        return importance.detach().to(layer.weight.device).clone()


@sparsesearch.hookimpl
def sparsesearch_register_strategies(register):
    register(Taylor())
