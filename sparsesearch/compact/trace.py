"""Tracing: a ``torch.fx`` graph of a mask-free copy, the shapes of its values, and words for
its nodes in error messages."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from sparsesearch.masks import Mask

Shapes = Mapping[fx.Node, "tuple[int, ...] | None"]


class TraceFailure(Exception):
    """``torch.fx`` cannot trace the model (or its graph does not run): it cannot be compacted."""


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def as_args(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _own_class(module: nn.Module) -> None:
    """A private copy of a parametrized module's class (``copy.deepcopy`` shares it, and
    removing a parametrization edits the class, which would break the original model)."""
    cls = type(module)
    attrs = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, attrs)


def strip_masks(model: nn.Module) -> tuple[dict[tuple[str, str], torch.Tensor], dict[str, str]]:
    """Bake our :class:`Mask` parametrizations into plain tensors (in place, on a copy).

    Returns the masks ``{(module, tensor): mask}`` and ``{module: reason}`` for modules that keep
    other parametrizations (those cannot be resized).
    """
    masks: dict[tuple[str, str], torch.Tensor] = {}
    other: dict[str, str] = {}
    for mname, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tname in list(module.parametrizations.keys()):
            plist = module.parametrizations[tname]
            if all(isinstance(p, Mask) for p in plist):
                mask = plist[0].mask.detach().clone()
                for p in list(plist)[1:]:
                    mask = mask * p.mask
                masks[(mname, tname)] = mask
                _own_class(module)
                parametrize.remove_parametrizations(module, tname, leave_parametrized=True)
            else:
                kinds = ", ".join(sorted({type(p).__name__ for p in plist}))
                other[mname] = f"it has a {kinds} parametrization on {tname!r}"
    return masks, other


class _Tracer(fx.Tracer):
    """A tracer that remembers in which module tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.failed_in: tuple[str, str] | None = None

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                try:
                    name = self.path_of_module(m)
                except Exception:  # noqa: BLE001 - a module created inside forward
                    name = "?"
                self.failed_in = (name, type(m).__name__)
            raise


def trace(model: nn.Module) -> fx.GraphModule:
    """The ``torch.fx`` graph of ``model``, or :class:`TraceFailure` naming the blocking layer."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot compact"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = (
            f"layer {tracer.failed_in[0]!r} ({tracer.failed_in[1]})"
            if tracer.failed_in and tracer.failed_in[0]
            else f"the forward of {type(model).__name__}"
        )
        raise TraceFailure(
            f"torch.fx cannot trace {type(model).__name__}: {where} blocks it "
            f"({type(exc).__name__}: {first[:200]})"
        ) from exc
    return fx.GraphModule(model, graph)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def record_shapes(gm: fx.GraphModule, example_input: Any) -> dict[fx.Node, Any]:
    """The shape of every tensor value of ``gm`` on ``example_input`` (``None``: not a tensor)."""
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        rec.run(*as_args(example_input))
    return rec.shapes


def _first_user_frame(node: fx.Node) -> str | None:
    trace_ = node.stack_trace or ""
    found = None
    for line in trace_.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            path = line[6:].split('"', 1)[0]
            if f"{os.sep}torch{os.sep}" not in path:
                rest = line.split(", line ", 1)
                lineno = rest[1].split(",", 1)[0] if len(rest) > 1 else "?"
                found = f"{os.path.basename(path)}:{lineno}"
    return found


def describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """``layer 'features.3' (GroupNorm)`` or ``view at models.py:88 in 'features'``."""
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(modules[node.target]).__name__})"
    what = node.target if isinstance(node.target, str) else getattr(
        node.target, "__name__", str(node.target)
    )
    parts = [f"{what!s}"]
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        owner = list(stack.values())[-1]
        owner_name = owner[0] if isinstance(owner, tuple) else str(owner)
        if owner_name:
            parts.append(f"in {owner_name!r}")
    src = _first_user_frame(node)
    if src:
        parts.append(f"at {src}")
    return " ".join(parts)


def nodes_in(value: Any) -> list[fx.Node]:
    """The graph nodes inside ``value`` (an argument structure of a node)."""
    found: list[fx.Node] = []
    fx.node.map_arg(value, lambda n: found.append(n) or n)
    return found
