"""Zero propagation: which channels of each value of a traced graph are *structurally* zero.

:class:`ZeroAnalysis` walks the graph once, in order, and hands every node to its handler in
the op table (:mod:`sparsesearch.compact.ops`). Masked weight rows and biases make zero
channels; ops that map zero to zero (ReLU, pooling, BatchNorm whose shift is masked, additions
of zeros, ...) carry them on. Nothing depends on the data. Without shapes, zeros are followed
as far as channel counts can be read off the zeros themselves (flatten and reshape end them);
:class:`~sparsesearch.compact.channels.ChannelAnalysis` adds the shapes and the channel classes
that compaction and dependency groups need.

The analysis is handed the op table's lookup (``rules``: :func:`~sparsesearch.compact.ops.handler_for`),
so the handlers, which read the analysis, and the analysis, which calls them, do not import
each other. ``on_norm(node, norm, zeros_in)`` is called for each normalisation module with the zeros of
its input: :func:`~sparsesearch.compact.norms.dependent_masks` masks BatchNorms with it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
from torch import nn

from sparsesearch.compact.errors import Unsupported
from sparsesearch.compact.trace import describe, nodes_in

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
OnNorm = Callable[[fx.Node, nn.Module, torch.Tensor], None]
# the op table's lookup (sparsesearch.compact.ops.handler_for): node -> (handler or None, op)
Rules = Callable[[fx.Node, Mapping[str, nn.Module]], "tuple[Callable[..., bool] | None, Any]"]


class ZeroAnalysis:
    """Zeros of every value of ``gm``, shapes unknown.

    Attributes:
        zero: ``{node: bool tensor (one flag per channel: structurally zero) or None (unknown)}``.
        calls: ``{module name: its call nodes}``, in graph order.
        unsupported_producers: ``{Conv / Linear name: why its call is not supported}``.

    The methods after ``channelwise`` record the channel structure handlers see (slots, ties,
    reads, resized modules); here they do nothing, :class:`ChannelAnalysis` records them.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        modules: Mapping[str, nn.Module],
        *,
        rules: Rules,
        pinned_modules: Mapping[str, str] | None = None,
        on_norm: OnNorm | None = None,
    ) -> None:
        self.gm = gm
        self.modules = modules
        self.rules = rules
        self.pinned_modules = dict(pinned_modules or {})
        self.on_norm = on_norm
        self.zero: dict[fx.Node, torch.Tensor | None] = {}
        self.calls: dict[str, list[fx.Node]] = {}
        self.unsupported_producers: dict[str, str] = {}
        for node in gm.graph.nodes:
            self._visit(node)
        self._finish()

    # -- visiting ------------------------------------------------------------------------------

    def _visit(self, node: fx.Node) -> None:
        self._alloc(node)
        try:
            handled = self._rule(node)
        except Unsupported as exc:
            handled = False
            why = str(exc)
        else:
            why = ""
        if not handled:
            self._unsupported(node, why)

    def _rule(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            self.calls.setdefault(node.target, []).append(node)
            if node.target in self.pinned_modules:
                raise Unsupported(self.pinned_modules[node.target])
        handler, op = self.rules(node, self.modules)
        return handler is not None and bool(handler(self, node, op))

    def _unsupported(self, node: fx.Node, why: str = "") -> None:
        desc = describe(node, self.modules)
        reason = f"{desc} is not supported" + (f" ({why})" if why else "")
        for src in nodes_in((node.args, node.kwargs)):
            self.pin(src, reason)
        self.pin(node, reason)
        self.zero[node] = None
        if node.op == "call_module" and isinstance(self.modules[node.target], (nn.Linear, *CONV)):
            self.unsupported_producers.setdefault(node.target, reason)

    # -- what handlers read --------------------------------------------------------------------

    def channels(self, node: Any) -> int | None:
        """The number of channels of ``node`` (here: of its zeros, once visited)."""
        if not isinstance(node, fx.Node):
            return None
        z = self.zero.get(node)
        return None if z is None else int(z.numel())

    def ndim(self, node: Any) -> int | None:
        """The rank of ``node`` (``None``: unknown; always, without shapes)."""
        return None

    def shape(self, node: Any) -> tuple[int, ...] | None:
        return None

    def tracked(self, node: Any) -> bool:
        """Whether ``node``'s channels are followed (here: its zeros are known)."""
        return isinstance(node, fx.Node) and self.zero.get(node) is not None

    def result_channels(self, node: fx.Node, operands: list[Any]) -> int | None:
        """The channels of an elementwise op's result (here: its widest operand's)."""
        widths = [self.channels(x) for x in operands if isinstance(x, fx.Node)]
        return max((w for w in widths if w is not None), default=None)

    def channelwise(self, node: fx.Node, src: Any, zero_preserving: bool) -> bool:
        """Output channel ``i`` of ``node`` is computed from channel ``i`` of ``src`` alone."""
        if not isinstance(src, fx.Node) or not self.tracked(src):
            return False
        self.tie_same(node, src)
        z = self.zero.get(src)
        self.zero[node] = z.clone() if (zero_preserving and z is not None) else (
            torch.zeros_like(z) if z is not None else None
        )
        return True

    # -- the channel structure (recorded by ChannelAnalysis) -----------------------------------

    def _alloc(self, node: fx.Node) -> None:
        """Give ``node`` its channel slots."""

    def _finish(self) -> None:
        """After the walk."""

    def pin(self, node: Any, reason: str) -> None:
        """``node``'s channels can never be removed, because of ``reason``."""

    def align(self, out: fx.Node, src: fx.Node, mapping: torch.Tensor | None = None) -> None:
        """Tie ``out`` channel ``i`` to ``src`` channel ``mapping[i]`` (identity when None)."""

    def tie_same(self, node: fx.Node, src: fx.Node) -> None:
        """``align(node, src)``; :class:`Unsupported` when their channel counts differ."""

    def tie_concat(self, node: fx.Node, tensors: list[fx.Node]) -> bool:
        """``node`` is ``tensors`` concatenated along the channels (False: cannot tie)."""
        return True

    def consume(self, src: fx.Node, reader: fx.Node) -> None:
        """``reader`` (a Conv / Linear) reads every channel of ``src`` into its weights."""

    def require_ndim(self, node: Any, n: int, message: str = "unbatched or unexpected {ndim}-D input") -> None:
        """:class:`Unsupported` (``message``) unless ``node`` is known to have rank ``n``."""

    def require_slots(self, node: Any, message: str) -> None:
        """:class:`Unsupported` (``message``) unless ``node``'s channels are followed."""

    def add_producer(self, target: str, node: fx.Node, pruned: torch.Tensor) -> None:
        """A Conv / Linear call and its masked output channels."""

    def add_resize(self, target: str, kind: str, node: fx.Node, in_node: fx.Node | None) -> None:
        """Module ``target`` (first called at ``node`` on ``in_node``) is sliced as ``kind``."""

    def add_balance(self, target: str, x: fx.Node, out: fx.Node, groups: int) -> None:
        """A grouped conv needs the same number of channels kept in each of its groups."""
