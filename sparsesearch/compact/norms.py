"""BatchNorms after masked channels: :func:`dependent_masks` masks them, :func:`norm_after`
names the one right after a layer.

A conv channel whose weights are masked feeds its BatchNorm a zero, and the BatchNorm turns it
into ``beta - mean * gamma / sqrt(var + eps)``, not zero, so the channel is not removable as
such (folding that constant into the next layer is wrong wherever the next conv pads with
zeros). Masking the BatchNorm affine of such channels makes "prune filter *i*" mean "filter *i*
and its BatchNorm channel are gone", so the masked model *is* the compacted model. The engine's
masking step (``sparsesearch.prune.apply_sparsity`` given the model) does it for channel masks.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from sparsesearch.compact.channels import ChannelAnalysis
from sparsesearch.compact.errors import CompactionWarning
from sparsesearch.compact.ops import NORM, handler_for
from sparsesearch.compact.propagate import ZeroAnalysis
from sparsesearch.compact.trace import TraceFailure, record_shapes, trace
from sparsesearch.masks import apply_mask, get_mask


def dependent_masks(model: nn.Module, example_input: Any = None) -> dict[str, int]:
    """Mask the BatchNorm affine (``weight`` and ``bias``) of channels whose input is zero.

    The engine's masking step does this after masking output channels
    (``sparsesearch.prune.apply_sparsity(..., model=model)``, which ``prune`` and recipes
    use). A masked filter feeds its BatchNorm a zero channel, which the BatchNorm turns
    into its shift ``beta - mean * gamma / sqrt(var + eps)``; masking ``gamma`` and ``beta`` of
    that channel makes it zero, so the masked model computes exactly what the compacted model
    (:func:`compact`) computes, in eval and in train mode. Zeros are followed through the
    whole model (activations, pooling, depthwise convolutions, additions, ...), so e.g. the
    BatchNorm after a depthwise conv whose input channel was pruned is masked too.

    Works in place on the masked model (masks only grow; existing masks are kept). Returns
    ``{norm layer name: channels newly masked}``. ``example_input`` (optional) lets zeros be
    followed through flatten / reshape too. A model ``torch.fx`` cannot trace is left as it is
    (with a :class:`CompactionWarning`).
    """
    changed: dict[str, int] = {}
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}

    def on_norm(node: fx.Node, norm: nn.Module, zin: torch.Tensor) -> None:
        if not norm.affine or zin.numel() != norm.num_features:
            return
        beta = norm.bias.detach().cpu()
        gamma = norm.weight.detach().cpu()
        todo = zin & ((beta != 0) | (gamma != 0))
        if not bool(todo.any()):
            return
        keep = (~todo).to(norm.weight.dtype)
        for tname in ("weight", "bias"):
            old = get_mask(norm, tname)
            new = keep.to(getattr(norm, tname).device)
            if old is not None:
                new = new * old
            apply_mask(norm, new, tname)
        name = names.get(id(norm), str(node.target))
        changed[name] = changed.get(name, 0) + int(todo.sum())

    was = model.training
    try:
        gm = trace(model)
    except TraceFailure as exc:
        warnings.warn(f"sparsesearch.dependent_masks: {exc}", CompactionWarning, stacklevel=2)
        return changed
    shapes = None
    if example_input is not None:
        try:
            model.eval()
            shapes = record_shapes(gm, example_input)
        except Exception:  # noqa: BLE001 - fall back to the shape-free analysis
            shapes = None
        finally:
            model.train(was)
    try:
        if shapes is None:
            ZeroAnalysis(gm, modules, rules=handler_for, on_norm=on_norm)
        else:
            ChannelAnalysis(gm, modules, shapes, rules=handler_for, on_norm=on_norm)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(
            f"sparsesearch.dependent_masks: analysis failed ({type(exc).__name__}: {exc})",
            CompactionWarning, stacklevel=2,
        )
    return changed


def norm_after(model: nn.Module, layer: str) -> str | None:
    """The name of the normalisation module that reads ``layer``'s output directly (shape-free
    ``torch.fx`` trace of ``model``), or ``None`` (also when the model cannot be traced)."""
    try:
        gm = trace(model)
    except TraceFailure:
        return None
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == layer:
            for user in node.users:
                if user.op == "call_module" and isinstance(modules.get(user.target), NORM):
                    return user.target
            return None
    return None
