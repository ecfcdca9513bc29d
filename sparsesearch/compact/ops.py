"""The op table: what each ``torch.fx`` op does to zeros and channels, looked up by op kind.

Every node of a traced graph is handled by one *handler*, found by :func:`handler_for`:

* ``call_module`` nodes by the module's class, along its MRO (the most specific registered
  class wins, so a subclass of ``nn.ReLU`` is handled as ``nn.ReLU``);
* ``call_function`` nodes by the function (``torch.relu``, ``operator.add``, ...);
* ``call_method`` nodes by the method name (``"view"``, ``"relu"``, ...);
* ``placeholder`` / ``get_attr`` / ``output`` nodes by their kind (built in).

A handler is ``handler(a, node, op) -> bool``: ``a`` is the analysis walking the graph
(:class:`~sparsesearch.compact.propagate.ZeroAnalysis`, or its subclass with shapes and
channel classes, :class:`~sparsesearch.compact.channels.ChannelAnalysis`), ``node`` the
``fx.Node`` and ``op`` the module (``call_module``) or the target. It sets ``a.zero[node]``
(one bool per channel: structurally zero; ``None``: unknown) and ties output channels to the
input channels they come from (``a.channelwise(node, src, zero_preserving)`` for "channel ``i``
out is computed from channel ``i`` in alone", else ``a.align``, ``a.consume``, ``a.pin``). It
returns True when it understood the node, False when it did not, or raises
:class:`~sparsesearch.compact.errors.Unsupported` with a reason. A node not understood, or
without a handler, keeps every channel it touches, and :func:`~sparsesearch.compact.compact`
reports it as ``"<layer or op> is not supported (<reason>)"``.

New ops are added with :func:`register_op`; a channel-wise op takes one line::

    register_op(nn.RReLU, handler=channelwise(zero_preserving=True))

The built-in handlers are in :mod:`sparsesearch.compact.handlers`; the table is at the bottom.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from sparsesearch.compact import handlers as h
from sparsesearch.compact.errors import Unsupported
from sparsesearch.compact.handlers import Handler, channelwise
from sparsesearch.compact.propagate import CONV

__all__ = ["CONV", "NORM", "Handler", "Unsupported", "channelwise", "handler_for", "register_op"]

NORM = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, SyncBatchNorm, InstanceNorm*

MODULE_OPS: dict[type, Handler] = {}  # nn.Module subclass -> handler (looked up along the MRO)
FUNCTION_OPS: dict[Any, Handler] = {}  # call_function target -> handler
METHOD_OPS: dict[str, Handler] = {}  # tensor method name -> handler
_NODE_OPS: dict[str, Handler] = {"placeholder": h.placeholder, "get_attr": h.get_attr, "output": h.output}


def register_op(*targets: Any, handler: Handler | None = None):
    """Handle the ops ``targets`` with ``handler`` (without ``handler``: a decorator).

    A target is an ``nn.Module`` subclass (``call_module`` nodes of it or of a subclass), a
    string (``call_method`` nodes of that tensor method) or anything else (``call_function``
    nodes of that function). A later registration of a target replaces the earlier one. What
    a handler does: the module docstring; :func:`channelwise` makes the handler of an op that
    maps each channel to itself.
    """

    def add(fn: Handler) -> Handler:
        for target in targets:
            if isinstance(target, type) and issubclass(target, nn.Module):
                MODULE_OPS[target] = fn
            elif isinstance(target, str):
                METHOD_OPS[target] = fn
            else:
                FUNCTION_OPS[target] = fn
        return fn

    return add if handler is None else add(handler)


def handler_for(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Handler | None, Any]:
    """The handler of ``node`` and the ``op`` to call it with (handler ``None``: not in the
    table; a module not in the table gets a handler that says no)."""
    if node.op == "call_module":
        module = modules[node.target]
        for cls in type(module).__mro__:
            if cls in MODULE_OPS:
                return MODULE_OPS[cls], module
        return h.unknown_module, module
    if node.op == "call_function":
        return FUNCTION_OPS.get(node.target), node.target
    if node.op == "call_method":
        return METHOD_OPS.get(node.target), node.target
    return _NODE_OPS.get(node.op), node.target


# ---------------------------------------------------------------------------------------------
# the built-in table

# layers with weights
register_op(*CONV, handler=h.conv)
register_op(nn.Linear, handler=h.linear)
register_op(*NORM, handler=h.norm)
register_op(nn.PReLU, handler=h.prelu)

# channel-wise modules
register_op(
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Upsample, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    handler=channelwise(zero_preserving=True),
)
register_op(nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid, handler=channelwise(zero_preserving=False))
register_op(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
            nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, handler=h.max_pool)
register_op(nn.Hardtanh, handler=h.hardtanh_module)  # also ReLU6
register_op(nn.Threshold, handler=h.threshold)
register_op(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, handler=h.constant_pad)
register_op(nn.Flatten, handler=h.flatten_module)

# channel-wise functions and methods
register_op(
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, torch.selu,
    F.celu, F.gelu, F.silu, F.mish, F.hardswish, torch.tanh, F.tanh, F.softsign, F.tanhshrink,
    F.softshrink, F.hardshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate, F.upsample,
    torch.clone, torch.neg, torch.abs, operator.neg, operator.pos,
    "relu", "relu_", "tanh", "tanh_", "contiguous", "clone", "detach", "float", "double",
    "half", "bfloat16", "to", "type_as", "abs", "abs_", "neg", "neg_", "cpu", "cuda",
    handler=channelwise(zero_preserving=True),
)
register_op(
    torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, "sigmoid", "sigmoid_",
    handler=channelwise(zero_preserving=False),
)
register_op(F.max_pool1d, F.max_pool2d, F.max_pool3d,
            F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, handler=h.max_pool_function)
register_op(F.hardtanh, handler=h.hardtanh)
register_op(torch.clamp, torch.clip, "clamp", "clamp_", "clip", handler=h.clamp)
register_op(F.pad, handler=h.pad)

# shapes, indexing, reshaping, reductions
register_op("size", handler=h.size)
register_op("dim", handler=h.dim)
register_op(getattr, handler=h.getattr_)
register_op(operator.getitem, handler=h.getitem)
register_op("flatten", torch.flatten, handler=h.flatten_call)
register_op("view", "reshape", torch.reshape, handler=h.reshape)
register_op(torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin", handler=h.reduce)

# several inputs
register_op(torch.cat, torch.concat, torch.concatenate, handler=h.cat)
register_op(operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
            torch.subtract, "add", "add_", "sub", "sub_", handler=h.binary("add"))
register_op(operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_", handler=h.binary("mul"))
register_op(operator.truediv, operator.itruediv, torch.div, torch.true_divide, torch.divide,
            "div", "div_", "true_divide", handler=h.binary("div"))
