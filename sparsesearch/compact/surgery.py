"""Module surgery: :func:`compact` slices the removed channels out of a copy of the model.

The copy keeps the model's class and module names, with smaller tensors; the masks of what
remains are re-applied, so pruned-but-kept weights stay zero in later training. Which channels
go is the channel analysis' decision (:meth:`ChannelAnalysis.decide`); every result is checked
(:mod:`sparsesearch.compact.verify`).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from sparsesearch.compact.channels import ChannelAnalysis
from sparsesearch.compact.errors import CompactionError, CompactionWarning
from sparsesearch.compact.ops import handler_for
from sparsesearch.compact.trace import TraceFailure, numel, record_shapes, strip_masks, trace
from sparsesearch.compact.verify import RunFailure, check_runs, verify
from sparsesearch.errors import SparsesearchError
from sparsesearch.masks import apply_mask


@dataclasses.dataclass(frozen=True)
class CompactResult:
    """What :func:`compact` did.

    Attributes:
        model: the compacted model (a copy; the input is never modified), or the masked input
            model itself when ``fallback`` is True or nothing could be removed.
        fallback: True when the model could not be compacted at all (see ``reason``).
        reason: why it fell back (names the blocking layer), else ``None``.
        channels: ``{module name: (channels before, channels after)}`` of every resized module
            (output channels / features for Conv and Linear, features for BatchNorm).
        removed_channels: producer (Conv / Linear) output channels removed in total.
        blocked: one line per layer whose pruned channels were kept because of an op that cannot
            be compacted or a value that is not zero (these are warned about).
        tied: one line per layer whose pruned channels were kept because they share a dependency
            group (residual addition, ...) with channels that are not pruned (expected; no warning).
        params_before / params_after: ``sum(p.numel())`` of the input and of the returned model.
        max_diff: the largest |difference| seen by the equivalence check (``None`` unchecked).
    """

    model: nn.Module
    fallback: bool = False
    reason: str | None = None
    channels: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    removed_channels: int = 0
    blocked: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()
    params_before: int = 0
    params_after: int = 0
    max_diff: float | None = None

    @property
    def compression(self) -> float:
        return self.params_before / max(self.params_after, 1)

    def summary(self) -> str:
        if self.fallback:
            return f"not compacted ({self.reason}); {self.params_before} parameters"
        return (
            f"compacted: {self.params_before} -> {self.params_after} parameters "
            f"({self.removed_channels} channels removed, {len(self.channels)} modules resized)"
        )


def _param_like(old: torch.Tensor, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad)


class _Slicer:
    """How one module's tensors are cut: the same function for parameters and their masks."""

    def __init__(self, kind: str, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor):
        self.kind, self.module, self.keep_in, self.keep_out = kind, module, keep_in, keep_out
        if kind == "gconv":
            g = module.groups
            ipg = module.in_channels // g
            opg = module.out_channels // g
            local = []
            for k in range(g):
                sel = keep_in[(keep_in // ipg) == k] - k * ipg
                local.append(sel)
            lengths = {len(s) for s in local}
            outs = torch.bincount(keep_out // opg, minlength=g)
            if len(lengths) != 1 or len(set(outs.tolist())) != 1:
                raise CompactionError(f"grouped conv {module} would be unbalanced (internal error)")
            self.local = torch.stack(local)  # (g, L)
            self.group_of_out = keep_out // opg

    def __call__(self, name: str, t: torch.Tensor) -> torch.Tensor:
        dev = t.device
        ko, ki = self.keep_out.to(dev), self.keep_in.to(dev)
        if self.kind in ("norm", "prelu"):
            return t.index_select(0, ko)
        if name == "bias":
            return t.index_select(0, ko)
        if self.kind in ("conv", "linear"):
            return t.index_select(0, ko).index_select(1, ki)
        if self.kind == "dwconv":
            return t.index_select(0, ko)
        # gconv
        sel = t.index_select(0, ko)
        idx = self.local.to(dev)[self.group_of_out.to(dev)]  # (n_out, L)
        idx = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return torch.gather(sel, 1, idx)


def _resize_module(kind: str, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> _Slicer:
    slicer = _Slicer(kind, module, keep_in, keep_out)
    for pname, p in list(module.named_parameters(recurse=False)):
        if pname == "weight" or pname == "bias":
            setattr(module, pname, _param_like(p, slicer(pname, p.data)))
    if kind == "norm":
        for bname in ("running_mean", "running_var"):
            buf = getattr(module, bname, None)
            if buf is not None:
                setattr(module, bname, buf.index_select(0, keep_out.to(buf.device)).clone())
        module.num_features = len(keep_out)
    elif kind == "prelu":
        module.num_parameters = len(keep_out)
    elif kind == "linear":
        module.in_features, module.out_features = len(keep_in), len(keep_out)
    else:
        module.in_channels, module.out_channels = len(keep_in), len(keep_out)
        if kind == "dwconv":
            module.groups = len(keep_in)
    return slicer


def _fallback(model: nn.Module, reason: str, params: int, **extra: Any) -> CompactResult:
    warnings.warn(
        f"sparsesearch.compact: model not compacted, keeping the masked model: {reason}",
        CompactionWarning,
        stacklevel=3,
    )
    return CompactResult(
        model=model, fallback=True, reason=reason, params_before=params, params_after=params,
        **extra,
    )


def compact(
    model: nn.Module,
    *,
    example_input: Any,
    check: bool = True,
    atol: float = 1e-5,
    keep_masks: bool = True,
) -> CompactResult:
    """Remove the pruned channels of ``model`` for real; return a :class:`CompactResult`.

    ``model`` is a model pruned with a channel strategy (whole output channels masked through
    :mod:`sparsesearch.masks`; run :func:`dependent_masks` after masking so BatchNorm channels go
    with their filters). It is never modified: the compacted model is a copy (same class, same
    module names, smaller tensors), with the masks of what remains re-applied when
    ``keep_masks`` (so pruned-but-kept weights stay zero if it is trained further).

    ``example_input`` is one input batch (a tensor, or a tuple of positional inputs); it sets the
    shapes the model is traced with. With ``check`` (the default, and what the engine always
    uses) the compacted and the masked model run in eval mode on ``example_input`` and a
    seeded random batch of its shape; any ``|difference| > atol * max(1, max |output|)``
    raises :class:`CompactionError` naming the first layer that differs and its layer group.

    A model that cannot be compacted (``torch.fx`` cannot trace it, or an unsupported op blocks
    every pruned channel) is returned unchanged with ``fallback=True`` and a ``reason`` naming
    the blocking layer, and a :class:`CompactionWarning`; pruned channels blocked in part of the
    model are kept there and listed in ``blocked``.
    """
    params_before = numel(model)
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001
        return _fallback(model, f"the model cannot be copied ({type(exc).__name__}: {exc})", params_before)
    was_training = model.training
    work.eval()
    try:
        masks, other = strip_masks(work)
        gm = trace(work)
        try:
            shapes = record_shapes(gm, example_input)
        except Exception as exc:  # noqa: BLE001
            check_runs(model, example_input)
            raise TraceFailure(
                f"the traced graph of {type(model).__name__} fails on example_input "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from exc
        modules = dict(work.named_modules())
        analysis = ChannelAnalysis(gm, modules, shapes, rules=handler_for, pinned_modules=other)
        analysis.decide()
        blocked, tied = analysis.report()
    except TraceFailure as exc:
        return _fallback(model, str(exc), params_before)
    except SparsesearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - never crash on a model we do not understand
        return _fallback(
            model, f"analysis failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            params_before,
        )
    # surgery
    channels: dict[str, tuple[int, int]] = {}
    slicers: dict[str, _Slicer] = {}
    removed_channels = 0
    producer_names = {t for t, _, _ in analysis.producers}
    try:
        for target, rz in analysis.resize.items():
            module = modules[target]
            keep_out = analysis.kept(rz.out_node)
            keep_in = analysis.kept(rz.in_node) if rz.in_node in analysis.base else keep_out
            n_out = analysis.count[rz.out_node]
            n_in = analysis.count[rz.in_node] if rz.in_node in analysis.base else n_out
            if len(keep_out) == n_out and len(keep_in) == n_in:
                continue
            slicers[target] = _resize_module(rz.kind, module, keep_in, keep_out)
            channels[target] = (n_out, len(keep_out))
            if target in producer_names:
                removed_channels += n_out - len(keep_out)
    except Exception as exc:  # noqa: BLE001 - never crash: keep the masked model
        return _fallback(
            model, f"resizing layer {target!r} failed ({type(exc).__name__}: {exc})", params_before,
            blocked=tuple(blocked), tied=tuple(tied),
        )
    if not slicers:
        if blocked:
            return _fallback(
                model, "no pruned channel can be removed: " + "; ".join(blocked), params_before,
                blocked=tuple(blocked), tied=tuple(tied),
            )
        return CompactResult(
            model=model, fallback=False, reason=None, blocked=(), tied=tuple(tied),
            params_before=params_before, params_after=params_before,
        )
    for line in blocked:
        warnings.warn(f"sparsesearch.compact: {line}", CompactionWarning, stacklevel=2)
    if keep_masks:
        for (mname, tname), mask in masks.items():
            module = modules[mname]
            if mname in slicers:
                mask = slicers[mname](tname, mask)
            if not bool((mask == 0).any()):
                continue
            if getattr(module, tname).shape != mask.shape:
                continue
            apply_mask(module, mask, tname)

    max_diff = None
    if check:
        try:
            max_diff = verify(model, work, example_input, analysis, atol)
        except RunFailure as exc:
            return _fallback(model, str(exc), params_before, blocked=tuple(blocked), tied=tuple(tied))
    work.train(was_training)
    return CompactResult(
        model=work,
        fallback=False,
        reason=None,
        channels=channels,
        removed_channels=removed_channels,
        blocked=tuple(blocked),
        tied=tuple(tied),
        params_before=params_before,
        params_after=numel(work),
        max_diff=max_diff,
    )


def compact_model(model: nn.Module, *, example_input: Any, check: bool = True, atol: float = 1e-5,
                  keep_masks: bool = True) -> nn.Module:
    """:func:`compact`, returning just the (compacted or, on fallback, masked) model."""
    return compact(model, example_input=example_input, check=check, atol=atol, keep_masks=keep_masks).model
