"""Multiply-accumulate counts (MACs) of Linear and Conv layers, measured with forward hooks.

Per sample (batch-independent), for every call of a layer:

* ``Conv{1,2,3}d``: output elements per sample × ``in_channels / groups`` × kernel elements;
* ``Linear``: ``out_features × in_features`` × the positions it is applied at (1 for a
  ``(batch, features)`` input; ``L`` for ``(batch, L, features)``).

Biases, normalisation, activations and pooling are not counted (they are a few percent of a
CNN's MACs and are not what pruning removes). A masked model has the MACs of its dense shape:
pruning is only credited once the structure shrinks, so count the compacted model,
``count_macs(compact(model, example_input=x), x)``. ``count_macs(..., nonzero=True)`` instead
counts only the multiplications by non-zero weights (the ideal sparse-kernel count, ignoring
padding at borders).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["count_macs", "layer_macs"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _unwrap(model: Any) -> nn.Module:
    inner = getattr(model, "model", None)  # a CompactResult
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_macs needs an nn.Module (or a CompactResult), got {type(model).__name__}")
    return model


def _per_sample(t: torch.Tensor, batched: bool) -> int:
    if not batched:
        return t.numel()
    return t.numel() // t.shape[0] if t.shape[0] else 0


def layer_macs(model: Any, example_input: Any, *, nonzero: bool = False) -> dict[str, int]:
    """``{layer name: MACs per sample}`` of every Linear / Conv call in one forward pass.

    ``example_input`` is one batch (a tensor, or a tuple of positional inputs); the model runs
    once on it in eval mode without gradients (its training mode is restored). A layer called
    several times is counted for every call.
    """
    model = _unwrap(model)
    counts: dict[str, int] = {}
    handles = []

    def hook(module: nn.Module, inputs: tuple, output: Any, name: str) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
            return
        weight = module.weight.detach()
        if isinstance(module, nn.Linear):
            positions = _per_sample(output, x.dim() > 1) // module.out_features
            if nonzero:
                macs = positions * int(torch.count_nonzero(weight))
            else:
                macs = positions * module.out_features * module.in_features
        else:
            spatial_dims = weight.dim() - 2
            batched = x.dim() == spatial_dims + 2
            out_elems = _per_sample(output, batched)
            if nonzero:
                spatial = out_elems // module.out_channels
                macs = spatial * int(torch.count_nonzero(weight))
            else:
                macs = out_elems * (module.in_channels // module.groups) * math.prod(
                    module.kernel_size
                )
        counts[name] = counts.get(name, 0) + int(macs)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, *_CONV)) and ".parametrizations." not in f".{name}.":
            handles.append(
                module.register_forward_hook(lambda m, i, o, _n=name: hook(m, i, o, _n))
            )
    was_training = model.training
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts


def count_macs(model: Any, example_input: Any, *, nonzero: bool = False) -> int:
    """Total MACs per sample of ``model``'s Linear and Conv layers on ``example_input``.

    Batch-independent: the same for a batch of 1 or 64. ``model`` may be a
    :class:`~sparsesearch.compact.CompactResult` (its model is counted). See the module
    docstring for the formulas and for ``nonzero``.
    """
    return sum(layer_macs(model, example_input, nonzero=nonzero).values())
