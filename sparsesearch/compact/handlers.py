"""The built-in op handlers; :mod:`sparsesearch.compact.ops` says which op each handles.

A handler is ``handler(a, node, op) -> bool`` (see :mod:`sparsesearch.compact.ops`): it sets
``a.zero[node]`` from its inputs' zeros and ties channels through ``a`` (``a.channelwise``,
``a.align``, ``a.consume``, ``a.pin``, ...), which records them or not depending on the analysis
(:class:`~sparsesearch.compact.propagate.ZeroAnalysis` without shapes,
:class:`~sparsesearch.compact.channels.ChannelAnalysis` with them).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
from torch import nn

from sparsesearch.compact.errors import Unsupported
from sparsesearch.compact.trace import describe, nodes_in

if TYPE_CHECKING:
    from sparsesearch.compact.propagate import ZeroAnalysis

Handler = Callable[["ZeroAnalysis", fx.Node, Any], bool]


# ---------------------------------------------------------------------------------------------
# helpers


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _first(node: fx.Node) -> Any:
    return node.args[0] if node.args else None


def _spatial_rank(module: nn.Module) -> int | None:
    name = type(module).__name__
    for d in ("1d", "2d", "3d"):
        if name.endswith(d) or name.endswith(d.upper()):
            return int(d[0])
    return None


def _check_rank(a: ZeroAnalysis, module: nn.Module, x: Any) -> None:
    """A ``...2d`` module on an input whose rank is known to be other than 4 is not supported."""
    rank = _spatial_rank(module)
    n = a.ndim(x)
    if rank is not None and n not in (None, rank + 2):
        raise Unsupported(f"unbatched or unexpected {n}-D input")


def _simple_call(node: fx.Node, x: Any) -> bool:
    return isinstance(x, fx.Node) and len(node.args) == 1 and not node.kwargs


def channelwise(zero_preserving: bool) -> Handler:
    """The handler of an op computing output channel ``i`` from input channel ``i`` only
    (its first argument); ``zero_preserving``: it maps 0 to 0."""

    def handle(a: ZeroAnalysis, node: fx.Node, op: Any) -> bool:
        if isinstance(op, nn.Module):
            _check_rank(a, op, _first(node))
        return a.channelwise(node, _first(node), zero_preserving)

    return handle


# ---------------------------------------------------------------------------------------------
# graph inputs and outputs


def placeholder(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    a.pin(node, "the model input")
    a.zero[node] = None
    return True


def get_attr(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    a.pin(node, f"tensor attribute {node.target!r} used directly")
    a.zero[node] = None
    return True


def output(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    for src in nodes_in(node.args):
        a.pin(src, "the model output")
    return True


def unknown_module(a: ZeroAnalysis, node: fx.Node, module: nn.Module) -> bool:
    _check_rank(a, module, _first(node))
    return False


# ---------------------------------------------------------------------------------------------
# layers with weights


def conv(a: ZeroAnalysis, node: fx.Node, module: nn.Module) -> bool:
    x = _first(node)
    if not _simple_call(node, x):
        return False
    a.require_ndim(x, _spatial_rank(module) + 2)
    w = module.weight.detach()
    out_c, in_g = w.shape[0], w.shape[1]
    g = module.groups
    opg = out_c // g
    bias_zero = (
        torch.ones(out_c, dtype=torch.bool) if module.bias is None
        else (module.bias.detach() == 0).cpu()
    )
    wnz = (w.reshape(out_c, in_g, -1) != 0).any(-1).cpu()  # (out, in/g)
    pruned = ~wnz.any(1) & bias_zero
    zin = a.zero.get(x)
    if zin is not None and zin.numel() == in_g * g:
        in_nz = (~zin).view(g, in_g)[torch.arange(out_c) // opg]  # (out, in/g)
        a.zero[node] = ~(wnz & in_nz).any(1) & bias_zero
    else:
        a.zero[node] = pruned.clone()
    a.add_producer(node.target, node, pruned)
    a.require_slots(x, "its input has no channel dimension")
    if g > 1 and in_g == 1:  # depthwise (with channel multiplier opg)
        a.align(node, x, torch.arange(out_c) // opg)
        a.add_resize(node.target, "dwconv", node, x)
    else:
        a.consume(x, node)
        if g > 1:
            a.add_balance(node.target, x, node, g)
        a.add_resize(node.target, "gconv" if g > 1 else "conv", node, x)
    return True


def linear(a: ZeroAnalysis, node: fx.Node, module: nn.Linear) -> bool:
    x = _first(node)
    if not _simple_call(node, x):
        return False
    a.require_ndim(x, 2, "Linear on a {ndim}-D input (only (batch, features))")
    w = module.weight.detach()
    bias_zero = (
        torch.ones(w.shape[0], dtype=torch.bool) if module.bias is None
        else (module.bias.detach() == 0).cpu()
    )
    wnz = (w != 0).cpu()
    pruned = ~wnz.any(1) & bias_zero
    zin = a.zero.get(x)
    if zin is not None and zin.numel() == w.shape[1]:
        a.zero[node] = ~(wnz & ~zin).any(1) & bias_zero
    else:
        a.zero[node] = pruned.clone()
    a.add_producer(node.target, node, pruned)
    a.require_slots(x, "its input has no feature dimension")
    a.consume(x, node)
    a.add_resize(node.target, "linear", node, x)
    return True


def norm(a: ZeroAnalysis, node: fx.Node, module: nn.Module) -> bool:
    x = _first(node)
    if not _simple_call(node, x):
        return False
    rank = _spatial_rank(module)
    if rank is not None and not (isinstance(module, nn.BatchNorm1d) and a.ndim(x) == 2):
        a.require_ndim(x, rank + 2)
    zin = a.zero.get(x)
    if zin is not None and a.on_norm is not None:
        a.on_norm(node, module, zin)
    c = module.num_features
    if module.affine:
        beta = module.bias.detach().cpu()
        gamma = module.weight.detach().cpu()
    else:
        beta = torch.zeros(c)
        gamma = torch.ones(c)
    zero_out = beta == 0
    if module.track_running_stats and module.running_mean is not None:
        shift = beta - module.running_mean.detach().cpu() * gamma / torch.sqrt(
            module.running_var.detach().cpu() + module.eps
        )
        zero_out &= shift == 0
    if not a.channelwise(node, x, True):
        return False
    if a.zero.get(node) is not None:
        a.zero[node] = a.zero[node] & zero_out
    a.add_resize(node.target, "norm", node, x)
    return True


def prelu(a: ZeroAnalysis, node: fx.Node, module: nn.PReLU) -> bool:
    x = _first(node)
    if not a.channelwise(node, x, True):
        return False
    if module.num_parameters > 1:
        a.add_resize(node.target, "prelu", node, x)
    return True


# ---------------------------------------------------------------------------------------------
# channel-wise modules (the plain ones are ``channelwise`` in the op table)



def max_pool(a: ZeroAnalysis, node: fx.Node, module: nn.Module) -> bool:
    if module.return_indices:
        raise Unsupported("return_indices=True")
    _check_rank(a, module, _first(node))
    return a.channelwise(node, _first(node), True)


def hardtanh_module(a: ZeroAnalysis, node: fx.Node, module: nn.Hardtanh) -> bool:
    _check_rank(a, module, _first(node))
    return a.channelwise(node, _first(node), module.min_val <= 0 <= module.max_val)


def threshold(a: ZeroAnalysis, node: fx.Node, module: nn.Threshold) -> bool:
    _check_rank(a, module, _first(node))
    return a.channelwise(node, _first(node), module.threshold < 0 or module.value == 0)


def constant_pad(a: ZeroAnalysis, node: fx.Node, module: nn.Module) -> bool:
    _check_rank(a, module, _first(node))
    return a.channelwise(node, _first(node), module.value == 0)


def flatten_module(a: ZeroAnalysis, node: fx.Node, module: nn.Flatten) -> bool:
    return _flatten(a, node, _first(node), module.start_dim, module.end_dim)


# ---------------------------------------------------------------------------------------------
# channel-wise functions and methods



def max_pool_function(a: ZeroAnalysis, node: fx.Node, op: Any) -> bool:
    # F.max_poolNd(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices);
    # F.adaptive_max_poolNd(input, output_size, return_indices)
    position = 2 if "adaptive" in getattr(op, "__name__", "") else 6
    if arg(node, position, "return_indices", False):
        raise Unsupported("return_indices=True")
    return a.channelwise(node, _first(node), True)


def hardtanh(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    lo, hi = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
    return a.channelwise(node, _first(node), lo <= 0 <= hi)


def clamp(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    lo, hi = arg(node, 1, "min"), arg(node, 2, "max")
    if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
        return False
    return a.channelwise(node, _first(node), (lo is None or lo <= 0) and (hi is None or hi >= 0))


def pad(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    x = _first(node)
    pad = arg(node, 1, "pad")
    mode = arg(node, 2, "mode", "constant")
    value = arg(node, 3, "value", None)
    n = a.ndim(x)
    if not isinstance(pad, (tuple, list)) or (n is not None and len(pad) > 2 * (n - 2)):
        return False
    return a.channelwise(node, x, mode != "constant" or not value)


# ---------------------------------------------------------------------------------------------
# shapes, indexing, reshaping, reductions


def size(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    x = _first(node)
    dim = arg(node, 1, "dim")
    n = a.ndim(x)
    if dim is not None and n is not None and isinstance(dim, int) and dim % n == 1:
        a.pin(x, f"{describe(node, a.modules)} reads the channel count")
    return True



_HARMLESS_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


def dim(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    return True


def getattr_(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    return len(node.args) >= 2 and node.args[1] in _HARMLESS_ATTRS


def getitem(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    x = _first(node)
    index = node.args[1] if len(node.args) > 1 else None
    if not isinstance(x, fx.Node):
        return False
    if not a.tracked(x):
        # an item of a tuple / a size: new values, nothing to tie
        if a.channels(node) is not None:
            a.pin(node, f"{describe(node, a.modules)} (an item of a non-tensor value)")
            a.zero[node] = None
        reads_shape = (x.op == "call_function" and x.target is getattr) or (
            x.op == "call_method" and x.target == "size" and len(x.args) == 1 and not x.kwargs
        )
        if reads_shape and index == 1:
            a.pin(x.args[0], f"{describe(node, a.modules)} reads the channel count")
        return True
    full = slice(None, None, None)
    if (
        isinstance(index, tuple) and len(index) >= 2 and index[0] == full and index[1] == full
        and all(isinstance(i, (slice, int)) for i in index)
    ):
        return a.channelwise(node, x, True)
    raise Unsupported("it indexes the channel dimension")


def flatten_call(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    return _flatten(a, node, _first(node), arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1))


def _flatten(a: ZeroAnalysis, node: fx.Node, x: Any, start: int, end: int) -> bool:
    if not isinstance(x, fx.Node) or not a.tracked(x):
        return False
    n = a.ndim(x)
    if n is None:
        a.zero[node] = None  # the spatial size is unknown without shapes
        return True
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if start >= 2 or n == 2 or end <= 1 and start == 1:
        return a.channelwise(node, x, True)
    if start != 1:
        raise Unsupported("it flattens the batch dimension")
    return _expand_channels(a, node, x)


def _expand_channels(a: ZeroAnalysis, node: fx.Node, x: fx.Node) -> bool:
    """(N, C, ...) -> (N, C*P): out slot c*P + p <-> in slot c."""
    c_in, c_out = a.channels(x), a.channels(node)
    if c_out % c_in:
        raise Unsupported("the flattened size is not a multiple of the channels")
    factor = c_out // c_in
    a.align(node, x, torch.arange(c_out) // factor)
    z = a.zero.get(x)
    a.zero[node] = None if z is None else z.repeat_interleave(factor)
    return True


def reshape(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    x = _first(node)
    if not isinstance(x, fx.Node) or not a.tracked(x):
        return False
    if a.ndim(x) is None:
        a.zero[node] = None  # the new shape is unknown without shapes
        return True
    if node.target is torch.reshape:
        sizes = arg(node, 1, "shape")
    else:
        sizes = node.args[1:] if len(node.args) > 1 else node.kwargs.get("size", node.kwargs.get("shape"))
        if isinstance(sizes, (tuple, list)) and len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
    if not isinstance(sizes, (tuple, list)):
        raise Unsupported("its target shape is not a tuple of sizes")
    sizes = list(sizes)
    ins, outs = a.shape(x), a.shape(node)
    if outs is None or len(outs) < 2 or len(sizes) != len(outs) or outs[0] != ins[0]:
        raise Unsupported("it reshapes the batch or channel dimension")
    c, rest = ins[1], math.prod(ins[2:])
    dynamic = sizes[1] == -1 or isinstance(sizes[1], fx.Node)
    if outs[1] == c and math.prod(outs[2:]) == rest:
        if not dynamic:
            raise Unsupported(f"it hard-codes {sizes[1]} channels")
        return a.channelwise(node, x, True)
    if len(outs) == 2 and outs[1] == c * rest:
        if sizes[1] != -1:
            raise Unsupported(f"it hard-codes the flattened size {sizes[1]}")
        return _expand_channels(a, node, x)
    raise Unsupported("it moves channels to another dimension")


def reduce(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    x = _first(node)
    if not isinstance(x, fx.Node) or not a.tracked(x):
        return False
    dim = arg(node, 1, "dim")
    n = a.ndim(x)
    if dim is None:
        if n is None:  # no shapes: a full reduction is just an unknown value
            a.zero[node] = None
            return True
        raise Unsupported("it reduces over all dimensions")
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not all(isinstance(d, int) for d in dims):
        raise Unsupported("its dimensions are not constants")
    if n is None:  # no shapes: only non-negative dims >= 2 are known to be spatial
        if any(d < 2 for d in dims):
            a.zero[node] = None
            return True
    elif any(d % n < 2 for d in dims):
        raise Unsupported("it reduces over the batch or channel dimension")
    return a.channelwise(node, x, True)


# ---------------------------------------------------------------------------------------------
# several inputs


def cat(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
    tensors = arg(node, 0, "tensors")
    dim = arg(node, 1, "dim", 0)
    if not isinstance(tensors, (tuple, list)) or not all(
        isinstance(t, fx.Node) and a.tracked(t) for t in tensors
    ) or not isinstance(dim, int):
        return False
    zs = [a.zero.get(t) for t in tensors]
    n = a.ndim(node)
    if n is not None:
        dim = dim % n
    elif dim < 0:  # no shapes: which dimension is unknown
        a.zero[node] = None
        return True
    if dim == 1:
        if not a.tie_concat(node, tensors):
            return False
        a.zero[node] = None if any(z is None for z in zs) else torch.cat(zs)
        return True
    for t in tensors:
        a.align(node, t)
    zero = None
    if all(z is not None and z.numel() == zs[0].numel() for z in zs):
        zero = zs[0].clone()
        for z in zs[1:]:
            zero &= z
    a.zero[node] = zero
    return True


def binary(kind: str) -> Handler:
    def handle(a: ZeroAnalysis, node: fx.Node, _op: Any) -> bool:
        if len(node.args) < 2:
            return False
        operands = [node.args[0], node.args[1]]
        if kind == "add" and node.kwargs.get("alpha", 1) == 0:
            return False
        c_out = a.result_channels(node, operands)
        if c_out is None:
            return False
        n_out = a.ndim(node)
        flags: list[torch.Tensor | bool | None] = []  # per operand: per-channel zeros / scalar
        aligned: list[fx.Node] = []
        for x in operands:
            if isinstance(x, fx.Node):
                if not a.tracked(x):
                    return False  # a tensor without channels (or a size): unknown broadcast
                cx = a.channels(x)
                z = a.zero.get(x)
                if cx == c_out and a.ndim(x) == n_out:
                    aligned.append(x)
                    flags.append(z)
                elif cx == 1 and a.ndim(x) == n_out:
                    a.pin(x, f"{describe(node, a.modules)} broadcasts it over channels")
                    flags.append(bool(z[0]) if z is not None else False)
                else:
                    return False
            elif isinstance(x, (int, float)) and not isinstance(x, bool):
                flags.append(x == 0)
            else:
                return False
        for x in aligned:
            a.align(node, x)
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
        a.zero[node] = zero
        return True

    return handle
