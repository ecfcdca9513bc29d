"""Compaction: turn a channel-pruned (masked) model into a physically smaller one.

A channel strategy (``l1-filter``, or any plugin with ``granularity = "channel"``) masks whole
output channels: weight rows and biases become zero, but the tensors keep their size, so the
model is as large and as slow as before. :func:`compact` removes those channels for real: the
pruned output channels of each producer (Conv, Linear) and the matching input channels of every
consumer, through BatchNorm, activations, pooling, dropout, flatten → Linear (``channel × spatial``
columns), residual additions, concatenations, grouped and depthwise convolutions.

How it works (a ``torch.fx`` pass of our own; ``docs/compaction.md`` says why not Torch-Pruning):

1. **Trace** a mask-free copy of the model with ``torch.fx`` and record each tensor's shape on
   ``example_input``.
2. **Zero analysis**: follow, channel by channel, which values are *structurally* zero (masked
   weight rows and biases, through ops that map zero to zero: ReLU, pooling, BatchNorm whose
   shift is masked, additions of zero, ...). Nothing depends on the data.
3. **Channel classes**: union-find over ``(tensor, channel)`` slots. Ops that keep channels apart
   (BatchNorm, activations, pooling, depthwise convolution, additions, multiplications,
   flatten, concatenation) tie their input and output slots; a residual addition ties the
   channels of all its operands, so a channel of a residual stream is one class shared by every
   producer that writes to it (a *dependency group*).
4. A class is **removed** when every value read from it by a consumer (the input columns of a
   Conv / Linear) is zero. Classes reaching the model's output, the model's input, or an op we do
   not understand (LayerNorm, a reshape with a hard-coded size, a channel slice, ...) are kept;
   so are classes a grouped convolution needs to stay balanced, and one channel of each tensor.
5. **Surgery** on a copy of the model (same class, same module names, smaller tensors), then the
   masks of what remains are re-applied, so pruned-but-kept weights stay zero in later training.
6. **Equivalence, every time**: the compacted and the masked model run on the same inputs in
   eval mode; ``max |diff| <= atol * max(1, max |output|)`` or :class:`CompactionError` naming
   the first layer (and its group) that differs.

BatchNorm subtlety: a conv channel whose weights are masked feeds its BatchNorm a zero, and the
BatchNorm turns it into ``beta - mean * gamma / sqrt(var + eps)``, not zero, so the channel is not
removable as such (folding that constant into the next layer is wrong wherever the next conv pads
with zeros). The engine therefore masks the BatchNorm affine of such channels too:
:func:`dependent_masks` (call it right after masking, as ``sparsesearch.prune`` does for channel
strategies) makes "prune filter *i*" mean "filter *i* and its BatchNorm channel are gone", so the
masked model *is* the compacted model. Without it, :func:`compact` still never lies: those channels
are kept and reported.

Where a model cannot be compacted (``torch.fx`` cannot trace it, or every pruned channel is
blocked by an unsupported op), :func:`compact` warns, names the blocking layer and returns the
masked model unchanged with ``fallback=True``. It never crashes on a model it does not
understand; only a compacted model that computes something else raises.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import os
import warnings
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.macs import count_macs
from sparsesearch.masks import Mask, apply_mask, get_mask
from sparsesearch.strategy import GRAPH_ATTR as _GRAPH_ATTR

__all__ = [
    "CompactResult",
    "CompactionError",
    "CompactionWarning",
    "compact",
    "compact_model",
    "dependent_masks",
    "ChannelGroup",
    "DependencyGraph",
    "GROUP_SCORES",
    "dependency_graph",
    "graph_of",
    "group_scores",
    "norm_after",
]


class CompactionError(SparsesearchError):
    """The compacted model does not compute what the masked model computes (names the group)."""


class CompactionWarning(UserWarning):
    """Pruned channels that could not be removed, or a model that could not be compacted."""


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


# ---------------------------------------------------------------------------------------------
# op tables

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, SyncBatchNorm, InstanceNorm*

# channel-wise modules with f(0) == 0
_ZERO_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Upsample, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
# channel-wise modules whose f(0) may be non-zero
_NONZERO_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid,
)

_ZERO_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, torch.selu,
    F.celu, F.gelu, F.silu, F.mish, F.hardswish, torch.tanh, F.tanh, F.softsign, F.tanhshrink,
    F.softshrink, F.hardshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate, F.upsample,
    torch.clone, torch.neg, torch.abs, operator.neg, operator.pos,
}
_POOL_WITH_INDICES = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}
_NONZERO_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid}
_ZERO_METHODS = {
    "relu", "relu_", "tanh", "tanh_", "contiguous", "clone", "detach", "float", "double",
    "half", "bfloat16", "to", "type_as", "abs", "abs_", "neg", "neg_", "cpu", "cuda",
}
_NONZERO_METHODS = {"sigmoid", "sigmoid_"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
        torch.subtract, "add", "add_", "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, torch.divide,
        "div", "div_", "true_divide"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_HARMLESS_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


# ---------------------------------------------------------------------------------------------
# helpers


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _own_class(module: nn.Module) -> None:
    """A private copy of a parametrized module's class (``copy.deepcopy`` shares it, and
    removing a parametrization edits the class, which would break the original model)."""
    cls = type(module)
    attrs = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, attrs)


def _strip_masks(model: nn.Module) -> tuple[dict[tuple[str, str], torch.Tensor], dict[str, str]]:
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


class _TraceFailure(Exception):
    pass


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


def _trace(model: nn.Module) -> fx.GraphModule:
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
        raise _TraceFailure(
            f"torch.fx cannot trace {type(model).__name__}: {where} blocks it "
            f"({type(exc).__name__}: {first[:200]})"
        ) from exc
    return fx.GraphModule(model, graph)


def _first_user_frame(node: fx.Node) -> str | None:
    trace = node.stack_trace or ""
    found = None
    lines = trace.splitlines()
    for line in lines:
        line = line.strip()
        if line.startswith('File "'):
            path = line[6:].split('"', 1)[0]
            if f"{os.sep}torch{os.sep}" not in path:
                rest = line.split(", line ", 1)
                lineno = rest[1].split(",", 1)[0] if len(rest) > 1 else "?"
                found = f"{os.path.basename(path)}:{lineno}"
    return found


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
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


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _nodes_in(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(value, lambda n: found.append(n) or n)
    return found


def _spatial_rank(module: nn.Module) -> int | None:
    name = type(module).__name__
    for d in ("1d", "2d", "3d"):
        if name.endswith(d) or name.endswith(d.upper()):
            return int(d[0])
    return None



# ---------------------------------------------------------------------------------------------
# the analysis


@dataclasses.dataclass
class _Resize:
    """A module whose tensors are sliced: kind, its first call node, and the nodes to read."""

    kind: str  # conv, dwconv, gconv, linear, norm, prelu
    node: fx.Node
    in_node: fx.Node | None
    out_node: fx.Node


class _Analysis:
    """Zero analysis (always) and channel classes (when ``shapes`` are known) of one graph."""

    def __init__(
        self,
        gm: fx.GraphModule,
        modules: Mapping[str, nn.Module],
        shapes: Mapping[fx.Node, tuple[int, ...] | None] | None,
        *,
        pinned_modules: Mapping[str, str] | None = None,
        on_norm=None,
    ) -> None:
        self.gm = gm
        self.modules = modules
        self.shapes = shapes
        self.track = shapes is not None
        self.pinned_modules = dict(pinned_modules or {})
        self.on_norm = on_norm  # dependent_masks' callback: (node, module, in_zero) -> None
        self.zero: dict[fx.Node, torch.Tensor | None] = {}
        # slots
        self.base: dict[fx.Node, int] = {}
        self.count: dict[fx.Node, int] = {}
        self.parent: list[int] = []
        self.slot_node: list[fx.Node] = []
        self.pins: list[tuple[int, int, str]] = []  # (start, stop, reason) slot ranges
        self.reads: list[tuple[torch.Tensor, torch.Tensor, str]] = []  # (slots, nonzero, who)
        self.producers: list[tuple[str, fx.Node, torch.Tensor]] = []  # (module, node, pruned)
        self.unsupported_producers: dict[str, str] = {}
        self.resize: dict[str, _Resize] = {}
        self.calls: dict[str, list[fx.Node]] = {}
        self.balance: list[tuple[str, fx.Node, fx.Node | None, int]] = []
        for node in gm.graph.nodes:
            self._visit(node)
        if self.track:
            self._tie_repeated_calls()

    # -- slots ---------------------------------------------------------------------------------

    def channels(self, node: Any) -> int | None:
        if not isinstance(node, fx.Node):
            return None
        if self.track:
            shape = self.shapes.get(node)
            return shape[1] if shape is not None and len(shape) >= 2 else None
        z = self.zero.get(node)
        return None if z is None else int(z.numel())

    def ndim(self, node: Any) -> int | None:
        if not self.track or not isinstance(node, fx.Node):
            return None
        shape = self.shapes.get(node)
        return None if shape is None else len(shape)

    def _alloc(self, node: fx.Node) -> None:
        if not self.track or node in self.base:
            return
        c = self.channels(node)
        if c is None:
            return
        start = len(self.parent)
        self.base[node] = start
        self.count[node] = c
        self.parent.extend(range(start, start + c))
        self.slot_node.extend([node] * c)

    def find(self, s: int) -> int:
        parent = self.parent
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def slots(self, node: fx.Node) -> torch.Tensor:
        b = self.base[node]
        return torch.arange(b, b + self.count[node])

    def tracked(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and (node in self.base if self.track else self.zero.get(node) is not None)

    def pin(self, node: Any, reason: str) -> None:
        if self.track and isinstance(node, fx.Node) and node in self.base:
            b = self.base[node]
            self.pins.append((b, b + self.count[node], reason))

    def align(self, out: fx.Node, src: fx.Node, mapping: torch.Tensor | None = None) -> None:
        """Tie out slot i to src slot mapping[i] (identity when None)."""
        if not self.track or out not in self.base or src not in self.base:
            return
        ob, sb = self.base[out], self.base[src]
        n = self.count[out]
        if mapping is None:
            if self.count[src] != n:
                raise _Unsupported("channel counts differ")
            for i in range(n):
                self.union(ob + i, sb + i)
        else:
            for i, j in enumerate(mapping.tolist()):
                self.union(ob + i, sb + j)

    def consume(self, src: fx.Node, who: str) -> None:
        if not self.track or src not in self.base:
            return
        z = self.zero.get(src)
        nonzero = torch.ones(self.count[src], dtype=torch.bool) if z is None else ~z
        self.reads.append((self.slots(src), nonzero, who))

    # -- visiting ------------------------------------------------------------------------------

    def _visit(self, node: fx.Node) -> None:
        self._alloc(node)
        try:
            handled = self._rule(node)
        except _Unsupported as exc:
            handled = False
            why = str(exc)
        else:
            why = ""
        if not handled:
            self._unsupported(node, why)

    def _unsupported(self, node: fx.Node, why: str = "") -> None:
        desc = _describe(node, self.modules)
        reason = f"{desc} is not supported" + (f" ({why})" if why else "")
        for src in _nodes_in((node.args, node.kwargs)):
            self.pin(src, reason)
        self.pin(node, reason)
        self.zero[node] = None
        if node.op == "call_module" and isinstance(self.modules[node.target], (nn.Linear, *_CONV)):
            self.unsupported_producers.setdefault(node.target, reason)

    def _rule(self, node: fx.Node) -> bool:
        op = node.op
        if op == "placeholder":
            self.pin(node, "the model input")
            self.zero[node] = None
            return True
        if op == "get_attr":
            self.pin(node, f"tensor attribute {node.target!r} used directly")
            self.zero[node] = None
            return True
        if op == "output":
            for src in _nodes_in(node.args):
                self.pin(src, "the model output")
            return True
        if op == "call_module":
            module = self.modules[node.target]
            self.calls.setdefault(node.target, []).append(node)
            if node.target in self.pinned_modules:
                raise _Unsupported(self.pinned_modules[node.target])
            return self._module_rule(node, module)
        if op in ("call_function", "call_method"):
            return self._function_rule(node, node.target)
        return False

    # channel-wise op: out slot i <-> in slot i
    def _channelwise(self, node: fx.Node, src: Any, zero_preserving: bool) -> bool:
        if not isinstance(src, fx.Node) or not self.tracked(src):
            return False
        if self.track:
            if node not in self.base or self.count[node] != self.count[src]:
                raise _Unsupported("it changes the number of channels")
            self.align(node, src)
        z = self.zero.get(src)
        self.zero[node] = z.clone() if (zero_preserving and z is not None) else (
            torch.zeros_like(z) if z is not None else None
        )
        return True

    def _module_rule(self, node: fx.Node, module: nn.Module) -> bool:
        x = node.args[0] if node.args else None
        if isinstance(module, _CONV):
            return self._conv(node, module, x)
        if isinstance(module, nn.Linear):
            return self._linear(node, module, x)
        if isinstance(module, _NORM):
            return self._norm(node, module, x)
        if isinstance(module, nn.PReLU):
            if not self._channelwise(node, x, True):
                return False
            if module.num_parameters > 1:
                self.resize.setdefault(node.target, _Resize("prelu", node, x, node))
            return True
        if isinstance(module, nn.Flatten):
            return self._flatten(node, x, module.start_dim, module.end_dim)
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                               nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
            if module.return_indices:
                raise _Unsupported("return_indices=True")
        rank = _spatial_rank(module)
        if rank is not None and self.track and self.ndim(x) not in (None, rank + 2):
            if not (isinstance(module, nn.BatchNorm1d) and self.ndim(x) == 2):
                raise _Unsupported(f"unbatched or unexpected {self.ndim(x)}-D input")
        if isinstance(module, nn.Hardtanh):  # also ReLU6
            return self._channelwise(node, x, module.min_val <= 0 <= module.max_val)
        if isinstance(module, nn.Threshold):
            return self._channelwise(node, x, module.threshold < 0 or module.value == 0)
        if isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            return self._channelwise(node, x, module.value == 0)
        if isinstance(module, _ZERO_MODULES):
            return self._channelwise(node, x, True)
        if isinstance(module, _NONZERO_MODULES):
            return self._channelwise(node, x, False)
        return False

    def _conv(self, node: fx.Node, conv: nn.Module, x: Any) -> bool:
        if not isinstance(x, fx.Node) or len(node.args) != 1 or node.kwargs:
            return False
        rank = _spatial_rank(conv)
        if self.track and self.ndim(x) != rank + 2:
            raise _Unsupported(f"unbatched or unexpected {self.ndim(x)}-D input")
        w = conv.weight.detach()
        out_c, in_g = w.shape[0], w.shape[1]
        g = conv.groups
        opg = out_c // g
        bias_zero = (
            torch.ones(out_c, dtype=torch.bool) if conv.bias is None
            else (conv.bias.detach() == 0).cpu()
        )
        wnz = (w.reshape(out_c, in_g, -1) != 0).any(-1).cpu()  # (out, in/g)
        pruned = ~wnz.any(1) & bias_zero
        zin = self.zero.get(x)
        if zin is not None and zin.numel() == in_g * g:
            in_nz = (~zin).view(g, in_g)[torch.arange(out_c) // opg]  # (out, in/g)
            self.zero[node] = ~(wnz & in_nz).any(1) & bias_zero
        else:
            self.zero[node] = pruned.clone()
        self.producers.append((node.target, node, pruned))
        if not self.track:
            return True
        if x not in self.base:
            raise _Unsupported("its input has no channel dimension")
        if g > 1 and in_g == 1:  # depthwise (with channel multiplier opg)
            self.align(node, x, torch.arange(out_c) // opg)
            self.resize.setdefault(node.target, _Resize("dwconv", node, x, node))
        else:
            self.consume(x, _describe(node, self.modules))
            kind = "gconv" if g > 1 else "conv"
            if g > 1:
                self.balance.append((node.target, x, node, g))
            self.resize.setdefault(node.target, _Resize(kind, node, x, node))
        return True

    def _linear(self, node: fx.Node, lin: nn.Linear, x: Any) -> bool:
        if not isinstance(x, fx.Node) or len(node.args) != 1 or node.kwargs:
            return False
        if self.track and self.ndim(x) != 2:
            raise _Unsupported(f"Linear on a {self.ndim(x)}-D input (only (batch, features))")
        w = lin.weight.detach()
        bias_zero = (
            torch.ones(w.shape[0], dtype=torch.bool) if lin.bias is None
            else (lin.bias.detach() == 0).cpu()
        )
        wnz = (w != 0).cpu()
        pruned = ~wnz.any(1) & bias_zero
        zin = self.zero.get(x)
        if zin is not None and zin.numel() == w.shape[1]:
            self.zero[node] = ~(wnz & ~zin).any(1) & bias_zero
        else:
            self.zero[node] = pruned.clone()
        self.producers.append((node.target, node, pruned))
        if self.track:
            if x not in self.base:
                raise _Unsupported("its input has no feature dimension")
            self.consume(x, _describe(node, self.modules))
            self.resize.setdefault(node.target, _Resize("linear", node, x, node))
        return True

    def _norm(self, node: fx.Node, norm: nn.Module, x: Any) -> bool:
        if not isinstance(x, fx.Node) or len(node.args) != 1 or node.kwargs:
            return False
        rank = _spatial_rank(norm)
        if self.track and rank is not None and self.ndim(x) != rank + 2:
            if not (isinstance(norm, nn.BatchNorm1d) and self.ndim(x) == 2):
                raise _Unsupported(f"unbatched or unexpected {self.ndim(x)}-D input")
        zin = self.zero.get(x)
        if zin is not None and self.on_norm is not None:
            self.on_norm(node, norm, zin)
        c = norm.num_features
        if norm.affine:
            beta = norm.bias.detach().cpu()
            gamma = norm.weight.detach().cpu()
        else:
            beta = torch.zeros(c)
            gamma = torch.ones(c)
        zero_out = beta == 0
        if norm.track_running_stats and norm.running_mean is not None:
            shift = beta - norm.running_mean.detach().cpu() * gamma / torch.sqrt(
                norm.running_var.detach().cpu() + norm.eps
            )
            zero_out &= shift == 0
        if not self._channelwise(node, x, True):
            return False
        if self.zero.get(node) is not None:
            self.zero[node] = self.zero[node] & zero_out
        self.resize.setdefault(node.target, _Resize("norm", node, x, node))
        return True

    def _flatten(self, node: fx.Node, x: Any, start: int, end: int) -> bool:
        if not isinstance(x, fx.Node) or not self.tracked(x):
            return False
        if not self.track:
            self.zero[node] = None  # the spatial size is unknown without shapes
            return True
        n = self.ndim(x)
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if start >= 2 or n == 2 or end <= 1 and start == 1:
            return self._channelwise(node, x, True)
        if start != 1:
            raise _Unsupported("it flattens the batch dimension")
        return self._expand_channels(node, x)

    def _expand_channels(self, node: fx.Node, x: fx.Node) -> bool:
        """(N, C, ...) -> (N, C*P): out slot c*P + p <-> in slot c."""
        c_in, c_out = self.count[x], self.count[node]
        if c_out % c_in:
            raise _Unsupported("the flattened size is not a multiple of the channels")
        factor = c_out // c_in
        self.align(node, x, torch.arange(c_out) // factor)
        z = self.zero.get(x)
        self.zero[node] = None if z is None else z.repeat_interleave(factor)
        return True

    def _function_rule(self, node: fx.Node, target: Any) -> bool:
        args = node.args
        x = args[0] if args else None
        is_method = node.op == "call_method"
        # shape reads
        if target in ("size",) and is_method:
            dim = _arg(node, 1, "dim")
            n = self.ndim(x)
            if dim is not None and n is not None and isinstance(dim, int) and dim % n == 1:
                self.pin(x, f"{_describe(node, self.modules)} reads the channel count")
            return True
        if target == "dim" and is_method:
            return True
        if target is getattr and len(args) >= 2 and args[1] in _HARMLESS_ATTRS:
            return True
        if target is operator.getitem:
            return self._getitem(node, x, args[1] if len(args) > 1 else None)
        # elementwise / channel-wise
        if (not is_method and target in _ZERO_FUNCTIONS) or (is_method and target in _ZERO_METHODS):
            return self._channelwise(node, x, True)
        if (not is_method and target in _NONZERO_FUNCTIONS) or (is_method and target in _NONZERO_METHODS):
            return self._channelwise(node, x, False)
        if not is_method and target in _POOL_WITH_INDICES:
            if _arg(node, 5, "return_indices", False):
                raise _Unsupported("return_indices=True")
            return self._channelwise(node, x, True)
        if not is_method and target is F.hardtanh:
            lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
            return self._channelwise(node, x, lo <= 0 <= hi)
        if target in (torch.clamp, torch.clip) or (is_method and target in ("clamp", "clamp_", "clip")):
            lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
            if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
                return False
            return self._channelwise(node, x, (lo is None or lo <= 0) and (hi is None or hi >= 0))
        if not is_method and target is F.pad:
            pad = _arg(node, 1, "pad")
            mode = _arg(node, 2, "mode", "constant")
            value = _arg(node, 3, "value", None)
            n = self.ndim(x)
            if not isinstance(pad, (tuple, list)) or (n is not None and len(pad) > 2 * (n - 2)):
                return False
            return self._channelwise(node, x, mode != "constant" or not value)
        if target in ("flatten",) and is_method or target is torch.flatten:
            return self._flatten(node, x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if (is_method and target in ("view", "reshape")) or target is torch.reshape:
            return self._reshape(node, x)
        if target in _REDUCE_FUNCTIONS or (is_method and target in _REDUCE_METHODS):
            return self._reduce(node, x)
        if target in _CAT:
            return self._cat(node)
        key = target
        if key in _ADD:
            return self._binary(node, "add")
        if key in _MUL:
            return self._binary(node, "mul")
        if key in _DIV:
            return self._binary(node, "div")
        return False

    def _getitem(self, node: fx.Node, x: Any, index: Any) -> bool:
        if not isinstance(x, fx.Node):
            return False
        if not self.tracked(x):
            # an item of a tuple / a size: new values, nothing to tie
            if self.channels(node) is not None:
                self.pin(node, f"{_describe(node, self.modules)} (an item of a non-tensor value)")
                self.zero[node] = None
            reads_shape = (x.op == "call_function" and x.target is getattr) or (
                x.op == "call_method" and x.target == "size" and len(x.args) == 1 and not x.kwargs
            )
            if reads_shape and index == 1:
                self.pin(x.args[0], f"{_describe(node, self.modules)} reads the channel count")
            return True
        full = slice(None, None, None)
        if (
            isinstance(index, tuple) and len(index) >= 2 and index[0] == full and index[1] == full
            and all(isinstance(i, (slice, int)) for i in index)
        ):
            return self._channelwise(node, x, True)
        raise _Unsupported("it indexes the channel dimension")

    def _reshape(self, node: fx.Node, x: Any) -> bool:
        if not isinstance(x, fx.Node) or not self.tracked(x):
            return False
        if not self.track:
            self.zero[node] = None
            return True
        if node.target is torch.reshape:
            sizes = _arg(node, 1, "shape")
        else:
            sizes = node.args[1:] if len(node.args) > 1 else node.kwargs.get("size", node.kwargs.get("shape"))
            if isinstance(sizes, (tuple, list)) and len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
                sizes = sizes[0]
        if not isinstance(sizes, (tuple, list)):
            raise _Unsupported("its target shape is not a tuple of sizes")
        sizes = list(sizes)
        ins, outs = self.shapes[x], self.shapes.get(node)
        if outs is None or len(outs) < 2 or len(sizes) != len(outs) or outs[0] != ins[0]:
            raise _Unsupported("it reshapes the batch or channel dimension")
        c, rest = ins[1], math.prod(ins[2:])
        dynamic = sizes[1] == -1 or isinstance(sizes[1], fx.Node)
        if outs[1] == c and math.prod(outs[2:]) == rest:
            if not dynamic:
                raise _Unsupported(f"it hard-codes {sizes[1]} channels")
            return self._channelwise(node, x, True)
        if len(outs) == 2 and outs[1] == c * rest:
            if sizes[1] != -1:
                raise _Unsupported(f"it hard-codes the flattened size {sizes[1]}")
            return self._expand_channels(node, x)
        raise _Unsupported("it moves channels to another dimension")

    def _reduce(self, node: fx.Node, x: Any) -> bool:
        if not isinstance(x, fx.Node) or not self.tracked(x):
            return False
        dim = _arg(node, 1, "dim")
        n = self.ndim(x)
        if dim is None:
            if not self.track:
                self.zero[node] = None
                return True
            raise _Unsupported("it reduces over all dimensions")
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not all(isinstance(d, int) for d in dims):
            raise _Unsupported("its dimensions are not constants")
        if n is None:  # no shapes: only non-negative dims >= 2 are known to be spatial
            if any(d < 2 for d in dims):
                self.zero[node] = None
                return True
        elif any(d % n < 2 for d in dims):
            raise _Unsupported("it reduces over the batch or channel dimension")
        return self._channelwise(node, x, True)

    def _cat(self, node: fx.Node) -> bool:
        tensors = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(tensors, (tuple, list)) or not all(
            isinstance(t, fx.Node) and self.tracked(t) for t in tensors
        ) or not isinstance(dim, int):
            return False
        zs = [self.zero.get(t) for t in tensors]
        n = self.ndim(node)
        if self.track:
            if node not in self.base:
                return False
            dim = dim % n
        elif dim < 0:
            self.zero[node] = None
            return True
        if dim == 1:
            if self.track:
                ob = self.base[node]
                offset = 0
                for t in tensors:
                    tb = self.base[t]
                    for i in range(self.count[t]):
                        self.union(ob + offset + i, tb + i)
                    offset += self.count[t]
            self.zero[node] = None if any(z is None for z in zs) else torch.cat(zs)
            return True
        for t in tensors:
            if self.track:
                self.align(node, t)
        zero = None
        if all(z is not None and z.numel() == zs[0].numel() for z in zs):
            zero = zs[0].clone()
            for z in zs[1:]:
                zero &= z
        self.zero[node] = zero
        return True

    def _binary(self, node: fx.Node, kind: str) -> bool:
        if len(node.args) < 2:
            return False
        operands = [node.args[0], node.args[1]]
        if kind == "add" and node.kwargs.get("alpha", 1) == 0:
            return False
        c_out = self.channels(node)
        n_out = self.ndim(node)
        if self.track and (c_out is None or node not in self.base):
            return False
        if not self.track:  # no shapes: the widest operand sets the channels
            widths = [self.channels(a) for a in operands if isinstance(a, fx.Node)]
            c_out = max((w for w in widths if w is not None), default=None)
            if c_out is None:
                return False
        flags: list[torch.Tensor | bool | None] = []  # per operand: per-channel zeros / scalar
        aligned: list[fx.Node] = []
        for a in operands:
            if isinstance(a, fx.Node):
                if not self.tracked(a):
                    return False  # a tensor without channels (or a size): unknown broadcast
                ca = self.channels(a)
                z = self.zero.get(a)
                if ca == c_out and (not self.track or self.ndim(a) == n_out):
                    aligned.append(a)
                    flags.append(z)
                elif ca == 1 and (not self.track or self.ndim(a) == n_out):
                    self.pin(a, f"{_describe(node, self.modules)} broadcasts it over channels")
                    flags.append(bool(z[0]) if z is not None else False)
                else:
                    return False
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                flags.append(a == 0)
            else:
                return False
        for a in aligned:
            self.align(node, a)
        if not aligned:
            return False

        def as_vec(f):
            if f is None:
                return torch.zeros(c_out or 0, dtype=torch.bool)
            if isinstance(f, bool):
                return torch.full((c_out or 0,), f, dtype=torch.bool)
            return f

        if kind == "add":
            zero = as_vec(flags[0]) & as_vec(flags[1])
        elif kind == "mul":
            zero = as_vec(flags[0]) | as_vec(flags[1])
        else:  # div: 0 / nonzero scalar only
            denom = operands[1]
            zero = as_vec(flags[0]) if isinstance(denom, (int, float)) and denom != 0 else as_vec(None)
        self.zero[node] = zero
        return True

    def _tie_repeated_calls(self) -> None:
        """A module called twice has one weight: tie its slots across calls."""
        for target, nodes in self.calls.items():
            if len(nodes) < 2 or target not in self.resize:
                continue
            first = nodes[0]
            for other in nodes[1:]:
                for a, b in ((first, other), (first.args[0], other.args[0])):
                    if a in self.base and b in self.base and self.count[a] == self.count[b]:
                        for i in range(self.count[a]):
                            self.union(self.base[a] + i, self.base[b] + i)
                    else:
                        self.pin(a, f"layer {target!r} is called on tensors of different shapes")
                        self.pin(b, f"layer {target!r} is called on tensors of different shapes")

    # -- decisions -----------------------------------------------------------------------------

    def decide(self) -> None:
        """Which slots are removed (``self.removed``) and why others are kept (``self.why``)."""
        n = len(self.parent)
        roots = torch.tensor([self.find(s) for s in range(n)], dtype=torch.long)
        self.roots = roots
        removable = torch.ones(n, dtype=torch.bool)
        why: dict[int, tuple[str, str]] = {}  # root -> (kind, reason)

        def block(slot_roots: torch.Tensor, kind: str, reason: str) -> None:
            newly = slot_roots[removable[slot_roots]].unique()
            removable[newly] = False
            for r in newly.tolist():
                why.setdefault(r, (kind, reason))

        for start, stop, reason in self.pins:
            block(roots[start:stop], "pinned", reason)
        for slots, nonzero, who in self.reads:
            block(roots[slots[nonzero]], "nonzero", who)
        changed = True
        while changed:
            changed = False
            for target, x, out, g in self.balance:
                for node, label in ((x, "input"), (out, "output")):
                    if node is None or node not in self.base:
                        continue
                    r2 = roots[self.slots(node)].view(g, -1)
                    per = r2.shape[1]
                    rem = removable[r2]
                    counts = rem.sum(1)
                    keep_n = min(int(counts.min()), per - 1)
                    for k in range(g):
                        extra = r2[k][rem[k]][keep_n:]
                        if extra.numel():
                            block(extra, "balance",
                                  f"grouped conv {target!r} needs the same number of {label} "
                                  f"channels in each of its {g} groups")
                            changed = True
            for node, start in self.base.items():
                c = self.count[node]
                if c and bool(removable[roots[start:start + c]].all()):
                    block(roots[start:start + 1], "keep-one", "every tensor keeps one channel")
                    changed = True
        self.removable_root = removable
        self.removed = removable[roots]
        self.why = why

    def kept(self, node: fx.Node) -> torch.Tensor:
        b = self.base[node]
        return (~self.removed[b:b + self.count[node]]).nonzero().flatten()

    def group_of(self, node: fx.Node) -> list[str]:
        """Producer layers sharing a channel class with ``node``'s output."""
        if node not in self.base:
            return []
        mine = set(self.roots[self.slots(node)].tolist())
        names = []
        for target, pnode, _ in self.producers:
            if pnode in self.base and mine & set(self.roots[self.slots(pnode)].tolist()):
                if target not in names:
                    names.append(target)
        return names

    def report(self) -> tuple[list[str], list[str]]:
        """Messages for pruned producer channels that were kept: (blocked, tied)."""
        blocked, tied = [], []
        seen: set[str] = set()
        producer_slots: dict[int, list[tuple[str, int, bool]]] = {}
        for target, pnode, _pruned in self.producers:
            if pnode not in self.base:
                continue
            z = self.zero.get(pnode)
            for i, r in enumerate(self.roots[self.slots(pnode)].tolist()):
                live = True if z is None else not bool(z[i])
                producer_slots.setdefault(r, []).append((target, i, live))
        for target, pnode, pruned in self.producers:
            if target in seen:
                continue
            seen.add(target)
            n_pruned = int(pruned.sum())
            if not n_pruned:
                continue
            if target in self.unsupported_producers or pnode not in self.base:
                blocked.append(
                    f"{target}: {n_pruned} pruned channels kept "
                    f"({self.unsupported_producers.get(target, 'not traced')})"
                )
                continue
            roots = self.roots[self.slots(pnode)]
            reasons: dict[str, int] = {}
            tied_with: list[str] = []
            kinds: set[str] = set()
            for i in pruned.nonzero().flatten().tolist():
                r = int(roots[i])
                if self.removable_root[r]:
                    continue
                kind, reason = self.why.get(r, ("pinned", "unknown"))
                if kind == "nonzero":
                    partners = [
                        t for t, j, live in producer_slots.get(r, [])
                        if live and not (t == target and j == i)
                    ]
                    if partners:
                        kind = "tied"
                        for t in partners:
                            if t not in tied_with:
                                tied_with.append(t)
                        reason = "tied"
                    else:
                        origin = self._first_nonzero(r)
                        reason = (
                            f"non-zero after {origin} before it reaches {reason}"
                            + ("; its shift is not masked: apply dependent_masks "
                               "(sparsesearch.compact) after pruning" if "Norm" in origin else "")
                        )
                kinds.add(kind)
                reasons[reason] = reasons.get(reason, 0) + 1
            if not reasons:
                continue
            kept_n = sum(reasons.values())
            parts = []
            for reason, k in reasons.items():
                if reason == "tied":
                    shown = ", ".join(tied_with[:4]) + (" ..." if len(tied_with) > 4 else "")
                    parts.append(f"{k} tied through their dependency group (residual addition, "
                                 f"depthwise conv, shared layer) to unpruned channels of {shown}")
                else:
                    parts.append(f"{k} by {reason}")
            msg = f"{target}: {kept_n} of {n_pruned} pruned channels kept ({'; '.join(parts)})"
            (tied if kinds <= {"tied", "balance", "keep-one"} else blocked).append(msg)
        return blocked, tied

    def _first_nonzero(self, root: int) -> str:
        for s in (self.roots == root).nonzero().flatten().tolist():
            node = self.slot_node[s]
            z = self.zero.get(node)
            if z is None or not bool(z[s - self.base[node]]):
                return _describe(node, self.modules)
        return "?"


class _Unsupported(Exception):
    pass


class _RunFailure(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# shapes


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def _as_args(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _record_shapes(gm: fx.GraphModule, example_input: Any) -> dict[fx.Node, Any]:
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        rec.run(*_as_args(example_input))
    return rec.shapes


# ---------------------------------------------------------------------------------------------
# surgery


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


# ---------------------------------------------------------------------------------------------
# equivalence


def _outputs(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _outputs(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    return []


def _check_inputs(example_input: Any, seed: int = 0) -> list[tuple]:
    args = _as_args(example_input)
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


def _localize(masked, compacted, args, analysis: _Analysis, atol: float) -> str:
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


# ---------------------------------------------------------------------------------------------
# public API


def _check_runs(model: nn.Module, example_input: Any) -> None:
    """A clear error when the model itself cannot run on ``example_input`` (a user error)."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*_as_args(example_input))
    except Exception as exc:  # noqa: BLE001
        raise SparsesearchError(
            f"{type(model).__name__} fails on example_input of shape "
            f"{tuple(getattr(example_input, 'shape', ()))}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
        ) from exc
    finally:
        model.train(was)


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
    params_before = _numel(model)
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001
        return _fallback(model, f"the model cannot be copied ({type(exc).__name__}: {exc})", params_before)
    was_training = model.training
    work.eval()
    try:
        masks, other = _strip_masks(work)
        gm = _trace(work)
        try:
            shapes = _record_shapes(gm, example_input)
        except Exception as exc:  # noqa: BLE001
            _check_runs(model, example_input)
            raise _TraceFailure(
                f"the traced graph of {type(model).__name__} fails on example_input "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from exc
        modules = dict(work.named_modules())
        analysis = _Analysis(gm, modules, shapes, pinned_modules=other)
        analysis.decide()
        blocked, tied = analysis.report()
    except _TraceFailure as exc:
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
            max_diff = _verify(model, work, example_input, analysis, atol)
        except _RunFailure as exc:
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
        params_after=_numel(work),
        max_diff=max_diff,
    )


def _verify(masked: nn.Module, compacted: nn.Module, example_input: Any, analysis: _Analysis, atol: float) -> float:
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
                    raise _RunFailure(
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


def compact_model(model: nn.Module, *, example_input: Any, check: bool = True, atol: float = 1e-5,
                  keep_masks: bool = True) -> nn.Module:
    """:func:`compact`, returning just the (compacted or, on fallback, masked) model."""
    return compact(model, example_input=example_input, check=check, atol=atol, keep_masks=keep_masks).model


def dependent_masks(model: nn.Module, example_input: Any = None) -> dict[str, int]:
    """Mask the BatchNorm affine (``weight`` and ``bias``) of channels whose input is zero.

    Call it right after masking output channels (``sparsesearch.prune`` does, for channel
    strategies). A masked filter feeds its BatchNorm a zero channel, which the BatchNorm turns
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
        gm = _trace(model)
    except _TraceFailure as exc:
        warnings.warn(f"sparsesearch.dependent_masks: {exc}", CompactionWarning, stacklevel=2)
        return changed
    shapes = None
    if example_input is not None:
        try:
            model.eval()
            shapes = _record_shapes(gm, example_input)
        except Exception:  # noqa: BLE001 - fall back to the shape-free analysis
            shapes = None
        finally:
            model.train(was)
    try:
        _Analysis(gm, modules, shapes, on_norm=on_norm)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(
            f"sparsesearch.dependent_masks: analysis failed ({type(exc).__name__}: {exc})",
            CompactionWarning, stacklevel=2,
        )
    return changed


# ---------------------------------------------------------------------------------------------
# dependency groups and exact structured counts (the budget planner's view of the graph)

GROUP_SCORES = ("sum", "mean", "max")


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Output channels of prunable layers that can only be removed together.

    A dependency group is one *unit* of structured pruning: channels tied by a residual
    addition, a multiplication, a depthwise convolution or a layer called twice. Its ``size``
    channels ("group channels") are removed or kept as a whole: removing group channel ``c``
    removes, in every member layer, the output channels ``members[layer][c]`` (a row of ``k``
    indices; ``k`` is 1 except for a depthwise conv with channel multiplier ``k``).
    """

    index: int
    members: Mapping[str, torch.Tensor]  # layer -> (size, k) LongTensor of output channels
    size: int

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.members)

    def multiplicity(self, layer: str) -> int:
        return int(self.members[layer].shape[1])


@dataclasses.dataclass
class _CostModel:
    """``const + Σ_t quad_t·out_t·in_t + lin_t·out_t`` with ``out = A·k + a0``, ``in = B·k + b0``
    (``k``: group channels kept per group). Exact for every allocation."""

    const: int
    A: torch.Tensor  # (T, G) int64
    a0: torch.Tensor  # (T,)
    B: torch.Tensor
    b0: torch.Tensor
    quad: torch.Tensor
    lin: torch.Tensor

    def state(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A @ k + self.a0, self.B @ k + self.b0

    def cost(self, k: torch.Tensor) -> int:
        out, inn = self.state(k)
        return self.const + int((self.quad * out * inn).sum()) + int((self.lin * out).sum())

    def deltas(self, out: torch.Tensor, inn: torch.Tensor) -> torch.Tensor:
        """Exact cost of keeping one more channel of each group, at state ``(out, inn)``."""
        A, B = self.A, self.B
        q = self.quad[:, None]
        return (q * (A * inn[:, None] + B * out[:, None] + A * B)).sum(0) + (self.lin[:, None] * A).sum(0)


@dataclasses.dataclass
class DependencyGraph:
    """What structured pruning of a model's prunable layers removes, from the ``torch.fx``
    analysis :func:`compact` uses. Built by :func:`dependency_graph`.

    Attributes:
        groups: the dependency groups (units of channel pruning).
        group_of: ``{layer: group index}`` for layers with removable channels.
        units: ``{layer: output channels}`` of every prunable layer.
        fixed: ``{layer: output channels never removed}`` (they reach the model output, an
            unsupported op, a grouped conv, a layer that is not prunable, ...).
        reasons: ``{layer: why its channels are fixed}`` (first reason) where ``fixed`` > 0.
        consumers: ``{layer: modules whose input channels are this layer's output channels}``
            (Conv / Linear, in graph order).
        norms: ``{layer: the normalisation module applied right after it}``.
    """

    groups: tuple[ChannelGroup, ...]
    group_of: dict[str, int]
    units: dict[str, int]
    fixed: dict[str, int]
    reasons: dict[str, str]
    consumers: dict[str, tuple[str, ...]]
    norms: dict[str, str]
    costs: dict[str, _CostModel]  # "params", and "macs" when shapes were recorded
    example_shape: tuple[int, ...] | None = None

    def group(self, layer: str) -> ChannelGroup | None:
        i = self.group_of.get(layer)
        return None if i is None else self.groups[i]

    def tied(self, layer: str) -> tuple[str, ...]:
        """The layers whose channels are tied to ``layer``'s (itself included)."""
        g = self.group(layer)
        return g.layers if g is not None else ((layer,) if layer in self.units else ())

    def keep_units(self, layer: str, group_keep: Mapping[int, int]) -> int:
        """Output channels ``layer`` keeps when each group keeps ``group_keep[index]`` channels."""
        g = self.group(layer)
        if g is None:
            return self.units[layer]
        return self.fixed[layer] + g.multiplicity(layer) * int(group_keep[g.index])

    def count(self, group_keep: Mapping[int, int] | torch.Tensor, metric: str = "params") -> int:
        """The exact parameter (or MAC per sample) count of the compacted model when every
        group keeps ``group_keep[index]`` of its channels."""
        if metric not in self.costs:
            raise SparsesearchError(f"no {metric!r} count in this dependency graph")
        if not isinstance(group_keep, torch.Tensor):
            group_keep = torch.tensor([int(group_keep[g.index]) for g in self.groups], dtype=torch.long)
        return self.costs[metric].cost(group_keep)


def group_scores(group: ChannelGroup, scores: Mapping[str, torch.Tensor], how: str = "sum") -> torch.Tensor:
    """One score per group channel, from the member layers' per-channel ``scores``.

    Each member ``m`` contributes ``v_m[c]`` = the sum of its scores over the channels of group
    channel ``c``. A single-member group scores ``v`` exactly (untied layers rank as before).
    Otherwise each member is L1-normalised (``u_m = v_m / Σ|v_m|``, so no member dominates
    because of its scale) and rescaled by the members' mean L1 norm, then aggregated:
    ``"sum"`` (default) ``Σ_m u_m``, ``"mean"`` ``Σ_m u_m / M``, ``"max"`` ``max_m u_m``.
    """
    if how not in GROUP_SCORES:
        raise SparsesearchError(f"group score must be one of {', '.join(GROUP_SCORES)}, got {how!r}")
    vs = []
    for layer, rows in group.members.items():
        s = scores[layer].detach().flatten().to(torch.float64).cpu()
        vs.append(s[rows].sum(1))
    if len(vs) == 1:
        return vs[0]
    norms = torch.stack([v.abs().sum() for v in vs])
    scale = norms.mean()
    u = torch.stack([v / n if n > 0 else torch.zeros_like(v) for v, n in zip(vs, norms)])
    if how == "sum":
        agg = u.sum(0)
    elif how == "mean":
        agg = u.mean(0)
    else:
        agg = u.max(0).values
    return agg * scale


def graph_of(module: nn.Module) -> DependencyGraph | None:
    """The dependency graph recorded on a prunable module by :func:`dependency_graph`."""
    g = module.__dict__.get(_GRAPH_ATTR)
    return g if isinstance(g, DependencyGraph) else None


def dependency_graph(
    model: nn.Module, layers: Any = None, example_input: Any = None, *, record: bool = True
) -> DependencyGraph:
    """The dependency groups of ``model``'s prunable ``layers`` and the exact cost model of
    structured pruning (parameters, and MACs per sample), on ``example_input``.

    Raises :class:`SparsesearchError` when the model cannot be traced or analysed (the planner
    then prices channels per layer). With ``record`` the graph is remembered on the layers'
    modules (a plain attribute: not in the ``state_dict``, copied by ``copy.deepcopy``), so that
    masking a copy of the model removes tied channels together without tracing again.
    """
    if example_input is None:
        raise SparsesearchError("the dependency graph needs an example input")
    if layers is None:
        layers = find_layers(model, example_input=example_input)
    names = [layer.name for layer in layers]
    try:
        work = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001
        raise SparsesearchError(f"the model cannot be copied ({type(exc).__name__}: {exc})") from exc
    work.eval()
    try:
        _masks, other = _strip_masks(work)
        modules = dict(work.named_modules())
        # the value analysis sees every prunable layer fully pruned (and its BatchNorm masked):
        # what stays non-zero then can never be removed
        with torch.no_grad():
            for n in names:
                m = modules[n]
                m.weight.zero_()
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            for m in modules.values():
                if isinstance(m, _NORM) and m.affine:
                    m.weight.zero_()
                    m.bias.zero_()
        gm = _trace(work)
        shapes = _record_shapes(gm, example_input)
        analysis = _Analysis(gm, modules, shapes, pinned_modules=other)
        graph = _build_graph(analysis, names, shapes, _numel(work), example_input, work)
    except _TraceFailure as exc:
        raise SparsesearchError(str(exc)) from None
    except SparsesearchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SparsesearchError(
            f"dependency analysis failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if record:
        real = dict(model.named_modules())
        for n in names:
            real[n].__dict__[_GRAPH_ATTR] = graph
    return graph


def _build_graph(a: _Analysis, names: list[str], shapes, total_params: int, example_input, work) -> DependencyGraph:
    n_slots = len(a.parent)
    roots = torch.tensor([a.find(s) for s in range(n_slots)], dtype=torch.long)
    blocked = torch.zeros(n_slots, dtype=torch.bool)  # indexed by root
    why: dict[int, str] = {}

    def block(rs: torch.Tensor, reason: str) -> None:
        for r in rs.unique().tolist():
            if not blocked[r]:
                blocked[r] = True
                why[r] = reason

    for start, stop, reason in a.pins:
        block(roots[start:stop], reason)
    for slots, nonzero, who in a.reads:
        block(roots[slots[nonzero]], f"non-zero where {who} reads it")
    for target, x, out, g in a.balance:
        for node in (x, out):
            if node is not None and node in a.base:
                block(roots[a.slots(node)], f"grouped conv {target!r} (groups={g})")

    nameset = set(names)
    out_node: dict[str, fx.Node] = {}
    units: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for n in names:
        module = a.modules[n]
        units[n] = int(module.weight.shape[0])
        rz = a.resize.get(n)
        if rz is None or rz.out_node not in a.base or a.count[rz.out_node] != units[n]:
            reasons[n] = a.unsupported_producers.get(n, "not traced as a Conv / Linear call")
            continue
        out_node[n] = rz.out_node

    while True:
        # classes holding output channels of prunable layers; layers sharing a class are tied
        owner: dict[int, list[str]] = {}
        for n, node in out_node.items():
            for r in roots[a.slots(node)].tolist():
                if not blocked[r]:
                    lst = owner.setdefault(r, [])
                    if not lst or lst[-1] != n:
                        lst.append(n)
        parent = {n: n for n in out_node}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for lst in owner.values():
            for other in lst[1:]:
                ra, rb = find(lst[0]), find(other)
                if ra != rb:
                    parent[rb] = ra
        comps: dict[str, list[str]] = {}
        for n in names:
            if n in out_node:
                comps.setdefault(find(n), []).append(n)
        # per component: its classes, in the first member's channel order
        class_group: dict[int, int] = {}
        group_classes: list[list[int]] = []
        group_members: list[list[str]] = []
        for members in comps.values():
            classes: list[int] = []
            seen: set[int] = set()
            for n in members:
                for r in roots[a.slots(out_node[n])].tolist():
                    if not blocked[r] and r not in seen:
                        seen.add(r)
                        classes.append(r)
            if not classes:
                continue
            gi = len(group_classes)
            for r in classes:
                class_group[r] = gi
            group_classes.append(classes)
            group_members.append(members)
        # every tensor must hold each class of a group equally often (else: fixed)
        bad: set[int] = set()
        node_counts: dict[fx.Node, tuple[dict[int, int], int]] = {}
        for node in a.base:
            rs = roots[a.slots(node)]
            per_class: dict[int, int] = {}
            fixed = 0
            for r in rs.tolist():
                gi = class_group.get(r)
                if gi is None:
                    fixed += 1
                else:
                    per_class[r] = per_class.get(r, 0) + 1
            mult: dict[int, int] = {}
            for r, c in per_class.items():
                gi = class_group[r]
                if mult.setdefault(gi, c) != c:
                    bad.add(gi)
            for gi, c in mult.items():
                present = sum(1 for r in group_classes[gi] if r in per_class)
                if present != len(group_classes[gi]):
                    bad.add(gi)
            node_counts[node] = (mult, fixed)
        if not bad:
            break
        for gi in bad:
            block(torch.tensor(group_classes[gi]), "channels of its group are not tied uniformly")

    G = len(group_classes)
    groups = []
    group_of: dict[str, int] = {}
    fixed_ch: dict[str, int] = {n: units[n] for n in names}
    for gi, (classes, members) in enumerate(zip(group_classes, group_members)):
        index = {r: c for c, r in enumerate(classes)}
        rows: dict[str, torch.Tensor] = {}
        for n in members:
            rs = roots[a.slots(out_node[n])].tolist()
            per: list[list[int]] = [[] for _ in classes]
            for ch, r in enumerate(rs):
                if r in index:
                    per[index[r]].append(ch)
            rows[n] = torch.tensor(per, dtype=torch.long)
            group_of[n] = gi
            fixed_ch[n] = units[n] - rows[n].numel()
        groups.append(ChannelGroup(index=gi, members=rows, size=len(classes)))
    for n in names:
        if fixed_ch[n] and n not in reasons:
            node = out_node.get(n)
            rs = roots[a.slots(node)].tolist() if node is not None else []
            reasons[n] = next((why[r] for r in rs if blocked[r] and r in why), "kept")

    def count_vec(node: fx.Node) -> tuple[list[int], int]:
        mult, fixed = node_counts[node]
        vec = [0] * G
        for gi, c in mult.items():
            vec[gi] = c
        return vec, fixed

    terms: dict[str, list[tuple[list[int], int, list[int], int, int, int]]] = {"params": [], "macs": []}
    zero = [0] * G
    for target, rz in a.resize.items():
        module = a.modules[target]
        if rz.out_node not in a.base:
            continue
        ov, of = count_vec(rz.out_node)
        has_in = rz.in_node is not None and rz.in_node in a.base
        iv, inf_ = count_vec(rz.in_node) if has_in else (zero, 0)
        if not any(ov) and not any(iv):
            continue  # nothing of this module changes
        if rz.kind in ("conv", "linear"):
            kernel = int(module.weight[0, 0].numel()) if rz.kind == "conv" else 1
            terms["params"].append((ov, of, iv, inf_, kernel, 1 if module.bias is not None else 0))
            for call in a.calls.get(target, [rz.node]):
                if call not in a.base or call.args[0] not in a.base:
                    continue
                shp = shapes.get(call)
                pos = math.prod(shp[2:]) if shp is not None and len(shp) > 2 else 1
                cov, cof = count_vec(call)
                civ, cif = count_vec(call.args[0])
                terms["macs"].append((cov, cof, civ, cif, pos * kernel, 0))
        elif rz.kind == "dwconv":
            kernel = int(module.weight[0].numel())
            terms["params"].append((ov, of, zero, 0, 0, kernel + (1 if module.bias is not None else 0)))
            for call in a.calls.get(target, [rz.node]):
                if call not in a.base:
                    continue
                shp = shapes.get(call)
                pos = math.prod(shp[2:]) if shp is not None and len(shp) > 2 else 1
                cov, cof = count_vec(call)
                terms["macs"].append((cov, cof, zero, 0, 0, pos * kernel))
        elif rz.kind == "norm":
            per = (2 if module.affine else 0)
            if per:
                terms["params"].append((ov, of, zero, 0, 0, per))
        elif rz.kind == "prelu":
            terms["params"].append((ov, of, zero, 0, 0, 1))
        else:  # gconv: its channels are fixed
            continue

    full = torch.tensor([len(c) for c in group_classes], dtype=torch.long)
    costs: dict[str, _CostModel] = {}
    macs_total = int(count_macs(work, example_input))
    for metric, total in (("params", total_params), ("macs", macs_total)):
        ts = terms[metric]
        if ts:
            A = torch.tensor([t[0] for t in ts], dtype=torch.long).view(len(ts), G)
            B = torch.tensor([t[2] for t in ts], dtype=torch.long).view(len(ts), G)
        else:
            A = B = torch.zeros((0, G), dtype=torch.long)
        model_ = _CostModel(
            const=0, A=A, a0=torch.tensor([t[1] for t in ts], dtype=torch.long),
            B=B, b0=torch.tensor([t[3] for t in ts], dtype=torch.long),
            quad=torch.tensor([t[4] for t in ts], dtype=torch.long),
            lin=torch.tensor([t[5] for t in ts], dtype=torch.long),
        )
        model_.const = total - model_.cost(full)
        costs[metric] = model_

    # consumers and the norm right after each layer (for strategies)
    consumers: dict[str, tuple[str, ...]] = {}
    norms: dict[str, str] = {}
    read_by: list[tuple[str, set[int]]] = []
    for target, rz in a.resize.items():
        if rz.kind in ("conv", "gconv", "linear") and rz.in_node in a.base:
            read_by.append((target, set(roots[a.slots(rz.in_node)].tolist())))
    for n, node in out_node.items():
        mine = set(roots[a.slots(node)].tolist())
        consumers[n] = tuple(t for t, rs in read_by if t != n and rs & mine)
        for user in node.users:
            if user.op == "call_module" and isinstance(a.modules.get(user.target), _NORM):
                norms[n] = user.target
                break
    ex = getattr(example_input, "shape", None)
    return DependencyGraph(
        groups=tuple(groups), group_of=group_of, units=units, fixed=fixed_ch, reasons=reasons,
        consumers=consumers, norms=norms, costs=costs,
        example_shape=tuple(ex) if ex is not None else None,
    )


def norm_after(model: nn.Module, layer: str) -> str | None:
    """The name of the normalisation module that reads ``layer``'s output directly (shape-free
    ``torch.fx`` trace of ``model``), or ``None`` (also when the model cannot be traced)."""
    try:
        gm = _trace(model)
    except _TraceFailure:
        return None
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == layer:
            for user in node.users:
                if user.op == "call_module" and isinstance(modules.get(user.target), _NORM):
                    return user.target
            return None
    return None
