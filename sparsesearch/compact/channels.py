"""Channel classes: union-find over ``(value, channel)`` slots, and which of them compaction
removes.

Ops that keep channels apart (BatchNorm, activations, pooling, depthwise convolution,
additions, multiplications, flatten, concatenation) tie their input and output slots; a
residual addition ties the channels of all its operands, so a channel of a residual stream is
one class shared by every producer that writes to it (a *dependency group*). A class is
removed when every value read from it by a consumer (the input columns of a Conv / Linear) is
zero. Classes reaching the model's output, the model's input, or an op not in the op table
are kept; so are classes a grouped convolution needs to stay balanced, and one channel of
each tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.fx as fx
from torch import nn

from sparsesearch.compact.errors import Unsupported
from sparsesearch.compact.propagate import OnNorm, Rules, ZeroAnalysis
from sparsesearch.compact.trace import Shapes, describe


@dataclasses.dataclass
class Resize:
    """A module whose tensors are sliced: kind, its first call node, and the nodes to read."""

    kind: str  # conv, dwconv, gconv, linear, norm, prelu
    node: fx.Node
    in_node: fx.Node | None
    out_node: fx.Node


class ChannelAnalysis(ZeroAnalysis):
    """Zeros and channel classes of ``gm``, with the ``shapes`` of its values recorded on an
    example input (used by :func:`compact`, :func:`dependency_graph`, and by
    :func:`dependent_masks` when it has an example input).

    Attributes (besides :class:`ZeroAnalysis`'s):
        base / count: ``{node: first slot / number of slots}`` of every value with channels.
        parent: the union-find forest over slots; ``find`` gives a slot's class.
        pins: ``(start, stop, reason)`` slot ranges that can never be removed.
        reads: ``(slots, nonzero, reader)`` of every Conv / Linear input.
        producers: ``(module, node, pruned output channels)`` of every Conv / Linear call.
        resize: ``{module: Resize}`` of every module compaction may slice.
        balance: ``(module, input, output, groups)`` of every grouped conv.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        modules: Mapping[str, nn.Module],
        shapes: Shapes,
        *,
        rules: Rules,
        pinned_modules: Mapping[str, str] | None = None,
        on_norm: OnNorm | None = None,
    ) -> None:
        self.shapes = shapes
        self.base: dict[fx.Node, int] = {}
        self.count: dict[fx.Node, int] = {}
        self.parent: list[int] = []
        self.slot_node: list[fx.Node] = []
        self.pins: list[tuple[int, int, str]] = []
        self.reads: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        self.producers: list[tuple[str, fx.Node, torch.Tensor]] = []
        self.resize: dict[str, Resize] = {}
        self.balance: list[tuple[str, fx.Node, fx.Node | None, int]] = []
        super().__init__(gm, modules, rules=rules, pinned_modules=pinned_modules, on_norm=on_norm)

    # -- shapes --------------------------------------------------------------------------------

    def channels(self, node: Any) -> int | None:
        shape = self.shape(node)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def ndim(self, node: Any) -> int | None:
        shape = self.shape(node)
        return None if shape is None else len(shape)

    def shape(self, node: Any) -> tuple[int, ...] | None:
        return self.shapes.get(node) if isinstance(node, fx.Node) else None

    def tracked(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node in self.base

    def result_channels(self, node: fx.Node, operands: list[Any]) -> int | None:
        return self.count[node] if node in self.base else None

    # -- slots ---------------------------------------------------------------------------------

    def _alloc(self, node: fx.Node) -> None:
        if node in self.base:
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

    # -- what handlers record ------------------------------------------------------------------

    def pin(self, node: Any, reason: str) -> None:
        if isinstance(node, fx.Node) and node in self.base:
            b = self.base[node]
            self.pins.append((b, b + self.count[node], reason))

    def align(self, out: fx.Node, src: fx.Node, mapping: torch.Tensor | None = None) -> None:
        if out not in self.base or src not in self.base:
            return
        ob, sb = self.base[out], self.base[src]
        n = self.count[out]
        if mapping is None:
            if self.count[src] != n:
                raise Unsupported("channel counts differ")
            for i in range(n):
                self.union(ob + i, sb + i)
        else:
            for i, j in enumerate(mapping.tolist()):
                self.union(ob + i, sb + j)

    def tie_same(self, node: fx.Node, src: fx.Node) -> None:
        if node not in self.base or self.count[node] != self.count[src]:
            raise Unsupported("it changes the number of channels")
        self.align(node, src)

    def tie_concat(self, node: fx.Node, tensors: list[fx.Node]) -> bool:
        if node not in self.base:
            return False
        ob = self.base[node]
        offset = 0
        for t in tensors:
            tb = self.base[t]
            for i in range(self.count[t]):
                self.union(ob + offset + i, tb + i)
            offset += self.count[t]
        return True

    def consume(self, src: fx.Node, reader: fx.Node) -> None:
        if src not in self.base:
            return
        z = self.zero.get(src)
        nonzero = torch.ones(self.count[src], dtype=torch.bool) if z is None else ~z
        self.reads.append((self.slots(src), nonzero, describe(reader, self.modules)))

    def require_ndim(self, node: Any, n: int, message: str = "unbatched or unexpected {ndim}-D input") -> None:
        if self.ndim(node) != n:
            raise Unsupported(message.format(ndim=self.ndim(node)))

    def require_slots(self, node: Any, message: str) -> None:
        if node not in self.base:
            raise Unsupported(message)

    def add_producer(self, target: str, node: fx.Node, pruned: torch.Tensor) -> None:
        self.producers.append((target, node, pruned))

    def add_resize(self, target: str, kind: str, node: fx.Node, in_node: fx.Node | None) -> None:
        self.resize.setdefault(target, Resize(kind, node, in_node, node))

    def add_balance(self, target: str, x: fx.Node, out: fx.Node, groups: int) -> None:
        self.balance.append((target, x, out, groups))

    def _finish(self) -> None:
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

    # -- decisions (compaction) ----------------------------------------------------------------

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
                return describe(node, self.modules)
        return "?"
