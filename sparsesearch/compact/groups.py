"""Dependency groups and exact structured counts: the budget planner's view of the graph.

:func:`dependency_graph` runs the channel analysis once on a copy of the model whose prunable
layers are fully zeroed (so what stays non-zero is what can never go) and turns its channel
classes into dependency groups (:class:`ChannelGroup`, the units of channel pruning) and a
closed-form cost model of the compacted model (parameters, MACs per sample) over the channels
the groups keep.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Mapping

import torch
import torch.fx as fx
from torch import nn

from sparsesearch.compact.channels import ChannelAnalysis
from sparsesearch.compact.ops import NORM, handler_for
from sparsesearch.compact.trace import TraceFailure, numel, record_shapes, strip_masks, trace
from sparsesearch.errors import SparsesearchError
from sparsesearch.layers import find_layers
from sparsesearch.macs import count_macs
from sparsesearch.strategy import GRAPH_ATTR

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

    def deltas(self, out: torch.Tensor, inn: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Exact cost of keeping ``step[g]`` more channels of each group ``g``, at state
        ``(out, inn)``."""
        A, B = self.A, self.B
        q = self.quad[:, None]
        st = step[None, :]
        return ((q * (A * inn[:, None] * st + B * out[:, None] * st + A * B * st * st)).sum(0)
                + (self.lin[:, None] * A * st).sum(0))

    def delta(self, out: torch.Tensor, inn: torch.Tensor, g: int, n: int) -> int:
        """Exact cost of keeping ``n`` more channels of group ``g`` alone (:meth:`deltas` for
        one group)."""
        a, b = self.A[:, g], self.B[:, g]
        return int((self.quad * (n * a * inn + n * b * out + n * n * a * b)).sum() + (self.lin * n * a).sum())


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
    g = module.__dict__.get(GRAPH_ATTR)
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
        _masks, other = strip_masks(work)
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
                if isinstance(m, NORM) and m.affine:
                    m.weight.zero_()
                    m.bias.zero_()
        gm = trace(work)
        shapes = record_shapes(gm, example_input)
        analysis = ChannelAnalysis(gm, modules, shapes, rules=handler_for, pinned_modules=other)
        graph = _build_graph(analysis, names, shapes, numel(work), example_input, work)
    except TraceFailure as exc:
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
            real[n].__dict__[GRAPH_ATTR] = graph
    return graph


def _build_graph(a: ChannelAnalysis, names: list[str], shapes, total_params: int, example_input, work) -> DependencyGraph:
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
            if user.op == "call_module" and isinstance(a.modules.get(user.target), NORM):
                norms[n] = user.target
                break
    ex = getattr(example_input, "shape", None)
    return DependencyGraph(
        groups=tuple(groups), group_of=group_of, units=units, fixed=fixed_ch, reasons=reasons,
        consumers=consumers, norms=norms, costs=costs,
        example_shape=tuple(ex) if ex is not None else None,
    )
