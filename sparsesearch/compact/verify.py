"""Equivalence, every time: the compacted and the masked model run on the same inputs in eval
mode; ``max |diff| <= atol * max(1, max |output|)`` or :class:`CompactionError` naming the
first layer (and its group) that differs."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from sparsesearch.compact.channels import ChannelAnalysis
from sparsesearch.compact.errors import CompactionError
from sparsesearch.compact.trace import as_args
from sparsesearch.errors import SparsesearchError


class RunFailure(Exception):
    """The compacted model does not run (compaction falls back to the masked model)."""


def _outputs(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _outputs(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    return []


def _check_inputs(example_input: Any, seed: int = 0) -> list[tuple]:
    args = as_args(example_input)
    batches = [args]
    if all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(1):
            batches.append(tuple(
                torch.randn(a.shape, generator=gen, dtype=torch.float32).to(a.device, a.dtype)
                for a in args
            ))
    return batches


def _max_diff(a: Any, b: Any) -> tuple[float, float]:
    ta, tb = _outputs(a), _outputs(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return math.inf, 1.0
    diff = max((float((x.double() - y.double()).abs().max()) for x, y in zip(ta, tb) if x.numel()), default=0.0)
    scale = max((float(x.double().abs().max()) for x in ta if x.numel()), default=0.0)
    return diff, scale


def _localize(masked, compacted, args, analysis: ChannelAnalysis, atol: float) -> str:
    """The first module (graph order) whose compacted output differs from the masked one."""
    got: dict[str, dict[str, Any]] = {"m": {}, "c": {}}
    handles = []
    for key, model in (("m", masked), ("c", compacted)):
        mods = dict(model.named_modules())
        for target in analysis.calls:
            if target in mods:
                def hook(_m, _i, out, _t=target, _k=key):
                    got[_k].setdefault(_t, out)
                handles.append(mods[target].register_forward_hook(hook))
    entered: list[str] = []
    finished: list[str] = []
    cmods = dict(compacted.named_modules())
    for target in analysis.calls:
        if target in cmods:
            handles.append(cmods[target].register_forward_pre_hook(
                lambda _m, _i, _t=target: entered.append(_t)
            ))
            handles.append(cmods[target].register_forward_hook(
                lambda _m, _i, _o, _t=target: finished.append(_t)
            ))
    failed = False
    try:
        with torch.no_grad():
            masked(*args)
            compacted(*args)
    except Exception:  # noqa: BLE001 - localisation is best effort
        failed = True
    finally:
        for h in handles:
            h.remove()
    if failed and entered:
        target = entered[-1]
        node = next((n for n in analysis.calls[target]), None)
        group = (analysis.group_of(node) if node is not None else []) or [target]
        where = "after" if finished and finished[-1] == target else "in"
        return (f"it fails {where} layer {target!r} ({type(cmods[target]).__name__}); "
                f"layer group: {', '.join(group)}")
    for node in analysis.gm.graph.nodes:
        if node.op != "call_module" or node.target not in got["m"] or node.target not in got["c"]:
            continue
        a, b = got["m"][node.target], got["c"][node.target]
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        if node in analysis.base and a.dim() >= 2 and a.shape[1] != b.shape[1]:
            a = a.index_select(1, analysis.kept(node).to(a.device))
        if a.shape != b.shape:
            bad = f"shape {tuple(b.shape)} instead of {tuple(a.shape)}"
        else:
            d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            s = float(a.double().abs().max()) if a.numel() else 0.0
            if d <= atol * max(1.0, s):
                continue
            bad = f"max |diff| {d:.3g}"
        group = analysis.group_of(node) or [node.target]
        return f"first at layer {node.target!r} ({bad}); layer group: {', '.join(group)}"
    return "the difference appears outside any module (functional ops)"


def check_runs(model: nn.Module, example_input: Any) -> None:
    """A clear error when the model itself cannot run on ``example_input`` (a user error)."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*as_args(example_input))
    except Exception as exc:  # noqa: BLE001
        raise SparsesearchError(
            f"{type(model).__name__} fails on example_input of shape "
            f"{tuple(getattr(example_input, 'shape', ()))}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
        ) from exc
    finally:
        model.train(was)


def verify(masked: nn.Module, compacted: nn.Module, example_input: Any, analysis: ChannelAnalysis, atol: float) -> float:
    was = masked.training
    masked.eval()
    compacted.eval()
    worst = 0.0
    try:
        for args in _check_inputs(example_input):
            with torch.no_grad():
                ref = masked(*args)
                try:
                    out = compacted(*args)
                except Exception as exc:  # noqa: BLE001 - e.g. a shape hard-coded out of sight
                    raise RunFailure(
                        f"the compacted model fails to run ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                        + _localize(masked, compacted, args, analysis, atol)
                    ) from exc
            diff, scale = _max_diff(ref, out)
            worst = max(worst, diff)
            if not diff <= atol * max(1.0, scale):
                raise CompactionError(
                    f"compacted model differs from the masked model (max |diff| {diff:.3g} > "
                    f"{atol:g} x {max(1.0, scale):.3g}); "
                    + _localize(masked, compacted, args, analysis, atol)
                )
    finally:
        masked.train(was)
    return worst
