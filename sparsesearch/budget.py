"""Counting parameters and allocating per-layer sparsity under a parameter budget.

Budgets are measured with :func:`count_params`: every parameter of the model, prunable or
not. Allocations are computed in whole units (weights, or output channels for channel
strategies), so the budget is met exactly by construction, before any training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsesearch.compact import dependency_graph, group_scores
from sparsesearch.errors import BudgetError, SparsesearchError
from sparsesearch.layers import run_hooked
from sparsesearch.macs import count_macs
from sparsesearch.masks import num_to_prune
from sparsesearch.strategy import Layer

log = logging.getLogger("sparsesearch")

__all__ = [
    "HEURISTICS",
    "LayerBudget",
    "ParamCount",
    "BudgetPlan",
    "ChannelBudgetPlan",
    "GroupBudget",
    "count_params",
    "plan_budget",
]

HEURISTICS = ("uniform", "global", "lamp", "erk")
# A channel allocation's top-up (after the proportional bisection) stops once this share of the
# budget is spent: the blocks that still fit past it are cheap early channels, which cost little
# of a parameter budget and much compute (12 % more MACs for 0.9 % more parameters on a CNN).
FILL_TO = 0.97


@dataclasses.dataclass(frozen=True)
class ParamCount:
    """Total and remaining (non-zero after masks) parameters, overall and per module."""

    total: int
    remaining: int
    layers: dict[str, tuple[int, int]]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.remaining / self.total if self.total else 0.0

    @property
    def compression(self) -> float:
        return self.total / max(self.remaining, 1)


def _effective_tensors(model: nn.Module):
    """Yield ``(module name, tensor name, underlying param, effective tensor)`` once each."""
    seen: set[int] = set()
    for mname, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations." in (
            "." + mname + "."
        ):
            continue
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                with torch.no_grad():
                    effective = getattr(module, pname)
                # one `original`, or `original0`, `original1`, ... (e.g. weight_norm's g and v)
                originals = [
                    t for n, t in plist.named_parameters(recurse=False) if n.startswith("original")
                ] or [
                    t for n, t in plist.named_buffers(recurse=False) if n.startswith("original")
                ]
                for original in originals:
                    if id(original) in seen:
                        continue
                    seen.add(id(original))
                    # count zeros on the effective tensor (masks), when it is the same tensor shape
                    eff = effective if effective.shape == original.shape else original
                    yield mname, pname, original, eff
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            effective = param
            # torch.nn.utils.prune keeps `<name>_orig` plus a `<name>_mask` buffer; the
            # `<name>` attribute is only refreshed by a forward pass, so recompute it
            mask = getattr(module, pname[:-5] + "_mask", None) if pname.endswith("_orig") else None
            if isinstance(mask, torch.Tensor) and mask.shape == param.shape:
                effective = param.detach() * mask
            yield mname, pname, param, effective


def count_params(model: nn.Module) -> ParamCount:
    """Count all parameters of ``model``: ``total`` and ``remaining`` (non-zero after masks).

    Shared (tied) parameters are counted once. Per-module counts are in ``layers``
    (``{module name: (total, remaining)}``, modules with parameters of their own only).
    Works on masks of sparsesearch and of ``torch.nn.utils.prune`` alike.
    """
    total = remaining = 0
    layers: dict[str, tuple[int, int]] = {}
    for mname, _pname, param, effective in _effective_tensors(model):
        n = param.numel()
        r = int(torch.count_nonzero(effective.detach()))
        total += n
        remaining += r
        t0, r0 = layers.get(mname, (0, 0))
        layers[mname] = (t0 + n, r0 + r)
    return ParamCount(total=total, remaining=remaining, layers=layers)


@dataclasses.dataclass(frozen=True)
class LayerBudget:
    """How one layer counts against the budget, in units (weights or output channels)."""

    name: str
    units: int  # prunable units (weights, or output channels)
    unit_params: int  # parameters removed with each pruned unit
    min_keep: int
    max_keep: int
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """A budget and the layers it is spent on; turns allocations into exact sparsities."""

    budget_params: int
    total_params: int
    fixed_params: int  # parameters that no allocation removes
    layers: tuple[LayerBudget, ...]
    granularity: str
    metric: str = "params"  # what the *_params fields count: "params" or "macs" (per sample)

    @property
    def min_feasible(self) -> int:
        return self.fixed_params + sum(lb.min_keep * lb.unit_params for lb in self.layers)

    @property
    def prunable_budget(self) -> int:
        return self.budget_params - self.fixed_params

    def params_for(self, keep: Mapping[str, int]) -> int:
        """Parameters remaining when each layer keeps ``keep[name]`` units (upper bound)."""
        return self.fixed_params + sum(keep[lb.name] * lb.unit_params for lb in self.layers)

    def to_sparsity(self, keep: Mapping[str, int]) -> dict[str, float]:
        """Per-layer sparsity amounts that the masks turn back into exactly ``keep`` units."""
        return {lb.name: (lb.units - keep[lb.name]) / lb.units for lb in self.layers}

    def keep_from_sparsity(self, sparsity: Mapping[str, float]) -> dict[str, int]:
        return {lb.name: lb.units - num_to_prune(sparsity[lb.name], lb.units) for lb in self.layers}

    # -- allocations ------------------------------------------------------------------------

    def project(self, densities: Mapping[str, float]) -> dict[str, int]:
        """Scale relative per-layer densities onto the budget; return units kept per layer.

        Finds the largest scale ``s`` with ``Σ clip(floor(s·d·n), min, max)·unit_params`` within
        budget, then spends what is left one unit at a time on the layers furthest below
        their target. The result always meets the budget.
        """
        for lb in self.layers:
            d = densities.get(lb.name)
            if d is None or not math.isfinite(d) or d < 0:
                raise SparsesearchError(f"density for layer {lb.name!r} must be >= 0, got {d!r}")
        avail = self.prunable_budget

        def keep_at(s: float) -> dict[str, int]:
            return {
                lb.name: max(lb.min_keep, min(lb.max_keep, math.floor(s * densities[lb.name] * lb.units)))
                for lb in self.layers
            }

        def cost(keep: Mapping[str, int]) -> int:
            return sum(keep[lb.name] * lb.unit_params for lb in self.layers)

        lo, hi = 0.0, 1.0
        while cost(keep_at(hi)) <= avail and hi < 1e12:
            lo, hi = hi, hi * 2
        for _ in range(100):
            mid = (lo + hi) / 2
            if cost(keep_at(mid)) <= avail:
                lo = mid
            else:
                hi = mid
        keep = keep_at(lo)
        left = avail - cost(keep)
        # greedy fill: the layer with the largest shortfall against its target first
        target = {lb.name: lo * densities[lb.name] * lb.units for lb in self.layers}
        order = sorted(self.layers, key=lambda lb: (keep[lb.name] - target[lb.name], lb.name))
        progress = True
        while progress and left > 0:
            progress = False
            for lb in order:
                if keep[lb.name] < lb.max_keep and lb.unit_params <= left:
                    keep[lb.name] += 1
                    left -= lb.unit_params
                    progress = True
                    break
        return keep

    def uniform(self) -> dict[str, int]:
        """The same sparsity in every layer (as far as per-layer limits allow)."""
        return self.project({lb.name: 1.0 for lb in self.layers})

    def erk(self) -> dict[str, int]:
        """Erdős–Rényi-kernel densities (Evci et al. 2020): ∝ Σ dims / Π dims of the weight."""
        dens = {lb.name: sum(lb.shape) / math.prod(lb.shape) for lb in self.layers}
        return self.project(dens)

    def global_threshold(self, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """One threshold across layers on ``scores`` (one tensor of unit scores per layer)."""
        keep = {lb.name: lb.min_keep for lb in self.layers}
        pool_scores, pool_params, pool_layer = [], [], []
        for i, lb in enumerate(self.layers):
            s = scores[lb.name].detach().flatten().to(torch.float64).cpu()
            if s.numel() != lb.units:
                raise SparsesearchError(
                    f"scores for layer {lb.name!r} have {s.numel()} entries, expected {lb.units}"
                )
            ranked = torch.sort(s, descending=True, stable=True).values
            extra = ranked[lb.min_keep : lb.max_keep]
            pool_scores.append(extra)
            pool_params.append(torch.full_like(extra, float(lb.unit_params)))
            pool_layer.append(torch.full((extra.numel(),), i, dtype=torch.long))
        if not pool_scores:
            return keep
        s = torch.cat(pool_scores)
        p = torch.cat(pool_params)
        li = torch.cat(pool_layer)
        order = torch.argsort(-s, stable=True)
        spent = torch.cumsum(p[order], 0)
        avail = self.prunable_budget - sum(lb.min_keep * lb.unit_params for lb in self.layers)
        taken = order[spent <= avail]
        counts = torch.bincount(li[taken], minlength=len(self.layers))
        for i, lb in enumerate(self.layers):
            keep[lb.name] += int(counts[i])
        return keep

    def lamp(self, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """LAMP (Lee et al. 2021): s² / Σ of s² over the layer's units scoring at least as high,
        then one global threshold."""
        return self.global_threshold({name: lamp_scores(s) for name, s in scores.items()})

    def heuristic(self, name: str, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
        if name == "uniform":
            return self.uniform()
        if name == "erk":
            return self.erk()
        if name in ("global", "lamp"):
            if scores is None:
                raise SparsesearchError(f"heuristic {name!r} needs strategy scores")
            return self.global_threshold(scores) if name == "global" else self.lamp(scores)
        raise SparsesearchError(f"unknown heuristic {name!r}; known: {', '.join(HEURISTICS)}")


@dataclasses.dataclass(frozen=True)
class GroupBudget:
    """One dependency group of a channel plan: ``size`` group channels, kept together."""

    index: int
    layers: tuple[str, ...]
    size: int
    min_keep: int
    max_keep: int


@dataclasses.dataclass(frozen=True)
class ChannelBudgetPlan(BudgetPlan):
    """A channel (structured) plan priced on the compacted model, exactly.

    The unit is a dependency group channel (:class:`sparsesearch.compact.ChannelGroup`): the
    output channels tied by residual additions, multiplications, depthwise convolutions or
    shared layers, removed together. Its cost is what compaction removes with it: the rows,
    biases and BatchNorm channels of every producer, plus every consumer's input slice
    (flatten → Linear fan-out included), with the consumer's own kept output channels; in
    MACs per sample for ``metric="macs"``. :meth:`params_for` is the compacted model's count
    (``compact(...).params_after``, or ``count_macs`` of it), not a bound.

    Every allocation gives all members of a group the same fraction (a layer keeps its fixed
    channels plus ``k`` × its multiplicity); ``layers[i].unit_params`` is the cost of one group
    channel at the dense model (the exact marginal cost depends on the neighbours' keep).
    """

    graph: Any = None
    groups: tuple[GroupBudget, ...] = ()
    group_score: str = "sum"
    multiple: int = 1  # group channels kept in multiples of this (or a group's full size)

    # -- group <-> layer -----------------------------------------------------------------------

    def _cost(self):
        return self.graph.costs[self.metric]

    def _layer_keep(self, k: torch.Tensor) -> dict[str, int]:
        keep = {}
        for lb in self.layers:
            gi = self.graph.group_of.get(lb.name)
            keep[lb.name] = lb.units if gi is None else self.graph.keep_units(lb.name, {gi: int(k[gi])})
        return keep

    def group_keep(self, keep: Mapping[str, int]) -> dict[int, int]:
        """Group channels kept per group index, from units kept per layer (members must agree)."""
        out: dict[int, int] = {}
        for g in self.groups:
            vals = {}
            for name in g.layers:
                mult = self.graph.groups[g.index].multiplicity(name)
                kept = int(keep[name]) - self.graph.fixed[name]
                if kept % mult:
                    raise SparsesearchError(
                        f"layer {name!r} keeps {keep[name]} channels; its group keeps channels "
                        f"in multiples of {mult} (plus {self.graph.fixed[name]} fixed)"
                    )
                vals[name] = kept // mult
            if len(set(vals.values())) > 1:
                shown = ", ".join(f"{n}={v}" for n, v in list(vals.items())[:4])
                raise SparsesearchError(
                    f"layers tied by a dependency group must keep the same channels ({shown})"
                )
            out[g.index] = next(iter(vals.values()))
        return out

    def _vec(self, gk: Mapping[int, int]) -> torch.Tensor:
        return torch.tensor([int(gk[g.index]) for g in self.groups], dtype=torch.long)

    @property
    def min_feasible(self) -> int:
        return self._cost().cost(torch.tensor([g.min_keep for g in self.groups], dtype=torch.long))

    def params_for(self, keep: Mapping[str, int]) -> int:
        """The exact count (parameters, or MACs per sample) of the compacted model."""
        return self._cost().cost(self._vec(self.group_keep(keep)))

    # -- allocations ---------------------------------------------------------------------------

    def _sizes(self) -> torch.Tensor:
        return torch.tensor([g.size for g in self.groups], dtype=torch.long)

    def _step(self, k: torch.Tensor) -> torch.Tensor:
        """Group channels to the next allowed keep of each group: the next multiple of
        ``multiple``, or the group's full size (0 at it)."""
        return torch.minimum((k // self.multiple + 1) * self.multiple, self._sizes()) - k

    def _fill(self, k: torch.Tensor, priority) -> torch.Tensor:
        """Top up a bisected allocation with group channels (one, or a block of ``multiple``).

        At a parameter budget the top-up stops once :data:`FILL_TO` of the budget is spent:
        what still fits past it are the early, high-resolution channels, cheap in parameters
        and dear in compute. Single channels go best ``priority`` (the heuristic's shape)
        first; blocks (``multiple`` > 1) go fewest MACs per parameter first, since one block
        at full resolution can add a quarter of the model's MACs. Where that cannot reach
        ``FILL_TO`` or would end on more MACs (and otherwise: MAC budgets, models without a
        MAC count, ``FILL_TO`` 1), best ``priority`` first until none fits."""
        macs = self.graph.costs.get("macs") if self.metric == "params" else None
        if macs is None or FILL_TO >= 1.0:
            return self._top_up(k, priority, None, 1.0)
        if self.multiple == 1:  # the shape order stopped at FILL_TO: a prefix of its own fill,
            return self._top_up(k, priority, None, FILL_TO)  # so never more MACs (or all of it)
        full = self._top_up(k.clone(), priority, None, 1.0)
        lean = self._top_up(k.clone(), lambda j, kj: 0.0, macs, FILL_TO)
        if self._cost().cost(lean) >= FILL_TO * self.budget_params and macs.cost(lean) <= macs.cost(full):
            return lean
        return full  # (a greedy order can end on more MACs: never more than the shape's fill)

    def _top_up(self, k: torch.Tensor, priority, other, share: float) -> torch.Tensor:
        """Add blocks while the exact cost fits and less than ``share`` of the budget is spent:
        the least of the ``other`` count per unit of the budget first (when given), then
        best ``priority``."""
        cost = self._cost()
        hi = torch.tensor([g.max_keep for g in self.groups], dtype=torch.long)
        left = self.budget_params - cost.cost(k)
        enough = self.budget_params - math.ceil(share * self.budget_params)  # left at the stop
        out, inn = cost.state(k)
        out2, inn2 = other.state(k) if other is not None else (None, None)
        while share >= 1.0 or left > enough:  # (at 1: until no block fits)
            step = self._step(k)
            d = cost.deltas(out, inn, step)
            ok = (step > 0) & (k + step <= hi) & (d <= left)
            if not bool(ok.any()):
                return k
            ratio = (other.deltas(out2, inn2, step).double() / d.clamp(min=1).double()
                     if other is not None else torch.zeros(len(self.groups), dtype=torch.float64))
            cand = [i for i in range(len(self.groups)) if bool(ok[i])]
            i = min(cand, key=lambda j: (float(ratio[j]), priority(j, int(k[j]) + int(step[j]) - 1), j))
            n = int(step[i])
            k[i] += n
            left -= int(d[i])
            out = out + n * cost.A[:, i]
            inn = inn + n * cost.B[:, i]
            if other is not None:
                out2 = out2 + n * other.A[:, i]
                inn2 = inn2 + n * other.B[:, i]
        return k

    def project(self, densities: Mapping[str, float]) -> dict[str, int]:
        """Scale relative densities onto the budget; a group's density is the mean of its
        members'. Bisection on the exact count, then the top-up (:meth:`_fill`): at least
        :data:`FILL_TO` of the budget is spent, or no group can take its next channel (block)."""
        for lb in self.layers:
            d = densities.get(lb.name)
            if d is None or not math.isfinite(d) or d < 0:
                raise SparsesearchError(f"density for layer {lb.name!r} must be >= 0, got {d!r}")
        dens = torch.tensor(
            [sum(densities[n] for n in g.layers) / len(g.layers) for g in self.groups], dtype=torch.float64
        )
        return self._project_groups(dens)

    def _project_groups(self, dens: torch.Tensor) -> dict[str, int]:
        cost = self._cost()
        size = torch.tensor([g.size for g in self.groups], dtype=torch.float64)
        lo_k = torch.tensor([g.min_keep for g in self.groups], dtype=torch.long)
        hi_k = torch.tensor([g.max_keep for g in self.groups], dtype=torch.long)

        m = self.multiple
        whole = size.long()

        def keep_at(s: float) -> torch.Tensor:
            want = torch.minimum(s * dens * size, size)  # in range before the int conversion
            if m > 1:  # the nearest multiple, or the group's full size
                raw = torch.round(want / m).long() * m
                raw = torch.where(raw >= whole, whole, raw)
            else:
                raw = torch.floor(want).long()
            return torch.minimum(torch.maximum(raw, lo_k), hi_k)

        lo, hi = 0.0, 1.0
        while cost.cost(keep_at(hi)) <= self.budget_params and hi < 1e12:
            lo, hi = hi, hi * 2
        for _ in range(60):
            mid = (lo + hi) / 2
            if cost.cost(keep_at(mid)) <= self.budget_params:
                lo = mid
            else:
                hi = mid
        k = keep_at(lo).clone()
        target = lo * dens * size
        k = self._fill(k, lambda j, kj: (kj + 1 - float(target[j])) / max(float(size[j]), 1.0))
        return self._layer_keep(k)

    def uniform(self) -> dict[str, int]:
        """The same fraction of every dependency group (as far as limits and the budget allow)."""
        return self._project_groups(torch.ones(len(self.groups), dtype=torch.float64))

    def erk(self) -> dict[str, int]:
        """ERK densities (∝ Σ dims / Π dims of the weight), averaged over a group's members."""
        shape = {lb.name: lb.shape for lb in self.layers}
        dens = torch.tensor(
            [sum(sum(shape[n]) / math.prod(shape[n]) for n in g.layers) / len(g.layers) for g in self.groups],
            dtype=torch.float64,
        )
        return self._project_groups(dens)

    def group_scores(self, scores: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """One score per group channel (``sparsesearch.compact.group_scores``)."""
        for lb in self.layers:
            s = scores.get(lb.name)
            if s is None or s.numel() != lb.units:
                raise SparsesearchError(
                    f"scores for layer {lb.name!r} have {None if s is None else s.numel()} entries, "
                    f"expected {lb.units}"
                )
        return [group_scores(self.graph.groups[g.index], scores, self.group_score) for g in self.groups]

    def _global(self, gscores: list[torch.Tensor]) -> dict[str, int]:
        """Blocks of group channels (one channel, or ``multiple``) in descending score (a
        block's mean), each taken while its exact cost fits."""
        cost = self._cost()
        k = torch.tensor([g.min_keep for g in self.groups], dtype=torch.long)
        pool_s, pool_g, pool_n = [], [], []
        for i, (g, s) in enumerate(zip(self.groups, gscores)):
            ranked = torch.sort(s, descending=True, stable=True).values.to(torch.float64)
            # blocks from min_keep to max_keep, ending on multiples (one channel each with 1)
            edges = torch.tensor(sorted({g.min_keep, g.max_keep, *(
                e for e in range(0, g.max_keep, self.multiple) if e > g.min_keep)}), dtype=torch.long)
            sizes = edges[1:] - edges[:-1]
            if self.multiple == 1:  # the scores themselves (a cumulative sum would round them)
                pool_s.append(ranked[edges[:-1]])
            else:  # each block's mean
                sums = torch.cat([torch.zeros(1, dtype=torch.float64), ranked.cumsum(0)])
                pool_s.append((sums[edges[1:]] - sums[edges[:-1]]) / sizes)
            pool_g.append(torch.full((sizes.numel(),), i, dtype=torch.long))
            pool_n.append(sizes)
        if not pool_s:
            return self._layer_keep(k)
        order = torch.argsort(-torch.cat(pool_s), stable=True)
        blocks = zip(torch.cat(pool_g)[order].tolist(), torch.cat(pool_n)[order].tolist())
        left = self.budget_params - cost.cost(k)
        out, inn = cost.state(k)
        full = torch.zeros(len(self.groups), dtype=torch.bool)
        for j, n in blocks:
            if full[j]:
                continue
            d = cost.delta(out, inn, j, n)
            if d <= left:
                k[j] += n
                left -= d
                out = out + n * cost.A[:, j]
                inn = inn + n * cost.B[:, j]
            else:  # costs only grow: this group can take no more
                full[j] = True
        return self._layer_keep(k)

    def global_threshold(self, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Group channels in descending group score, each taken while its exact cost fits."""
        return self._global(self.group_scores(scores))

    def lamp(self, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """LAMP on the group scores of each group, then :meth:`global_threshold`'s fill."""
        return self._global([lamp_scores(s) for s in self.group_scores(scores)])


def _channel_plan(
    model: nn.Module,
    layers: Sequence[Layer],
    budget_units: int,
    total: int,
    metric: str,
    example_input: Any,
    lo_hi: Mapping[str, tuple[float, float]],
    group_score: str,
    multiple: int = 1,
) -> ChannelBudgetPlan:
    graph = dependency_graph(model, layers, example_input)
    cost = graph.costs[metric]
    full = torch.tensor([g.size for g in graph.groups], dtype=torch.long)
    total_exact = cost.cost(full)
    groups = []
    for g in graph.groups:
        mn, mx = 1, g.size
        for name in g.layers:
            units = graph.units[name]
            lo, hi = lo_hi[name]
            max_keep = units - int(round(lo * units))
            min_keep = max(1, units - min(int(round(hi * units)), units - 1))
            fixed, mult = graph.fixed[name], g.multiplicity(name)
            mx = min(mx, (max_keep - fixed) // mult)
            mn = max(mn, -(-(min_keep - fixed) // mult))
        mx = max(mx, 1)
        mn = min(mn, mx)
        if multiple > 1:  # onto the allowed keeps: multiples, or the full size
            up = g.size if -(-mn // multiple) * multiple >= g.size else -(-mn // multiple) * multiple
            down = g.size if mx >= g.size else mx // multiple * multiple
            if up <= down:
                mn, mx = up, down
            else:  # the limits hold no multiple: they win, at the largest keep they allow
                mn = mx
        groups.append(GroupBudget(g.index, g.layers, g.size, mn, mx))
    lbs = []
    for layer in layers:
        name = layer.name
        w = layer.module.weight
        units = int(w.shape[0])
        gi = graph.group_of.get(name)
        if gi is None:
            lbs.append(LayerBudget(name, units, 0, units, units, tuple(w.shape)))
            continue
        gb = groups[gi]
        mult, fixed = graph.groups[gi].multiplicity(name), graph.fixed[name]
        one_less = full.clone()
        one_less[gi] -= 1
        unit_cost = total_exact - cost.cost(one_less)
        lbs.append(LayerBudget(
            name, units, int(unit_cost), fixed + mult * gb.min_keep, fixed + mult * gb.max_keep, tuple(w.shape),
        ))
    return ChannelBudgetPlan(
        budget_params=budget_units,
        total_params=total,
        fixed_params=cost.cost(torch.zeros(len(groups), dtype=torch.long)),
        layers=tuple(lbs),
        granularity="channel",
        metric=metric,
        graph=graph,
        groups=tuple(groups),
        group_score=group_score,
        multiple=multiple,
    )


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    """LAMP normalisation of one layer's scores (same shape)."""
    flat = scores.detach().flatten().to(torch.float64) ** 2
    order = torch.argsort(flat, stable=True)  # ascending
    sorted_sq = flat[order]
    # Σ over units at least as large = reverse cumulative sum
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    lamp_sorted = sorted_sq / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    out = torch.empty_like(flat)
    out[order] = lamp_sorted
    return out.view(scores.shape)


def resolve_budget(budget: int | float, total: int) -> int:
    """An int is a parameter count; a float in (0, 1] a fraction of ``total`` to keep."""
    if isinstance(budget, bool):
        raise SparsesearchError(f"budget must be an int or a float in (0, 1], got {budget=}")
    if isinstance(budget, int):
        if budget <= 0:
            raise SparsesearchError(f"budget must be a positive parameter count, got {budget=}")
        return budget
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise SparsesearchError(f"a fractional budget must be in (0, 1], got {budget=}")
        return int(math.floor(budget * total))
    raise SparsesearchError(f"budget must be an int or a float in (0, 1], got {budget=}")


def _positions(model: nn.Module, layers: Sequence[Layer], example_input: torch.Tensor) -> dict[str, int]:
    """Output positions per sample of each layer (H×W… for convs, 1 for Linear)."""
    out: dict[str, int] = {}
    handles = []
    for layer in layers:
        def hook(module, _inp, output, _name=layer.name):
            per_sample = output[0] if output.dim() > 1 else output
            out[_name] = int(per_sample.numel() // per_sample.shape[0]) if isinstance(
                module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else int(per_sample.numel() // module.out_features)
        handles.append(layer.module.register_forward_hook(hook))
    run_hooked(model, example_input, handles)
    missing = [layer.name for layer in layers if layer.name not in out]
    if missing:
        raise SparsesearchError(f"layer {missing[0]!r} did not run on the example input; cannot count its MACs")
    return out


def check_channel_multiple(value: Any) -> int:
    """``value`` as a ``channel_multiple`` (an int >= 1; numpy ints too), or one clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SparsesearchError(f"channel_multiple must be an int >= 1, got {value!r}")
    return int(value)


def plan_budget(
    model: nn.Module,
    layers: Sequence[Layer],
    budget: int | float,
    *,
    granularity: str = "weight",
    min_sparsity: float | Mapping[str, float] = 0.0,
    max_sparsity: float | Mapping[str, float] = 0.999,
    metric: str = "params",
    example_input: torch.Tensor | None = None,
    group_score: str = "sum",
    channel_multiple: int = 1,
) -> BudgetPlan:
    """The budget plan of ``model``: which parameters the layers can give up, and the limits.

    ``granularity="channel"`` with ``example_input`` gives a :class:`ChannelBudgetPlan`: units
    are dependency-group channels (tied channels go together, scored with ``group_score``,
    see :func:`sparsesearch.compact.group_scores`) priced exactly at what the compacted model
    loses. Without ``example_input``, or for a model ``torch.fx`` cannot trace, a channel costs
    its own weight row and bias (what the masks zero).

    ``channel_multiple`` (channel plans): every dependency group keeps a multiple of that many
    channels, or all of them (8 or 16 make the compacted model much faster on CPUs and GPUs,
    whose kernels work on blocks of channels); a group whose limits hold no multiple keeps the
    most its limits allow. Untraceable models (priced per layer) do not support it.

    ``metric="macs"`` plans a budget of multiply-accumulates per sample instead (Linear and
    Conv layers, as :func:`sparsesearch.count_macs` counts them; needs ``example_input``): a
    pruned weight saves one MAC per output position.

    Raises :class:`BudgetError` when the budget is below the feasible minimum (non-prunable
    parameters plus each layer's minimum), with that minimum in the message.
    """
    if metric not in ("params", "macs"):
        raise SparsesearchError(f"budget metric must be 'params' or 'macs', got {metric=}")
    channel_multiple = check_channel_multiple(channel_multiple)
    if metric == "macs":
        if example_input is None:
            raise SparsesearchError("a MACs budget needs an example input to measure the layers")
        total = int(count_macs(model, example_input))
        positions = _positions(model, layers, example_input)
    else:
        total = count_params(model).total
        positions = {}
    budget_units = resolve_budget(budget, total)

    def limit(value: float | Mapping[str, float], name: str, default: float) -> float:
        v = value.get(name, default) if isinstance(value, Mapping) else value
        if not 0.0 <= v < 1.0:
            raise SparsesearchError(f"per-layer sparsity limits must be in [0, 1), got {v=} for {name!r}")
        return v

    if granularity == "channel" and example_input is not None:
        lo_hi = {
            layer.name: (limit(min_sparsity, layer.name, 0.0), limit(max_sparsity, layer.name, 0.999))
            for layer in layers
        }
        plan = None
        try:
            plan = _channel_plan(model, layers, budget_units, total, metric, example_input, lo_hi, group_score,
                                 channel_multiple)
        except SparsesearchError:
            plan = None  # not traceable: priced per layer below
            if channel_multiple > 1:
                log.warning("channel_multiple=%d is ignored: the model cannot be traced, so its "
                            "channels are planned per layer", channel_multiple)
        if plan is not None:
            _check_feasible(plan, budget_units, metric, total)
            return plan
    lbs = []
    prunable = 0
    for layer in layers:
        w = layer.module.weight
        bias = getattr(layer.module, "bias", None)
        if granularity == "channel":
            units = int(w.shape[0])
            if metric == "macs":
                unit_cost = int(w[0].numel()) * positions[layer.name]
            else:
                unit_cost = int(w[0].numel()) + (1 if bias is not None else 0)
        else:
            units = int(w.numel())
            unit_cost = positions[layer.name] if metric == "macs" else 1
        prunable += units * unit_cost
        lo = limit(min_sparsity, layer.name, 0.0)
        hi = limit(max_sparsity, layer.name, 0.999)
        if granularity == "channel" and layer.is_output:
            lo = hi = 0.0
        max_keep = units - int(round(lo * units))
        min_keep = max(1, units - min(int(round(hi * units)), units - 1))
        min_keep = min(min_keep, max_keep)
        lbs.append(LayerBudget(layer.name, units, unit_cost, min_keep, max_keep, tuple(w.shape)))
    plan = BudgetPlan(
        budget_params=budget_units,
        total_params=total,
        fixed_params=total - prunable,
        layers=tuple(lbs),
        granularity=granularity,
        metric=metric,
    )
    _check_feasible(plan, budget_units, metric, total)
    return plan


def _check_feasible(plan: BudgetPlan, budget_units: int, metric: str, total: int) -> None:
    if budget_units < plan.min_feasible:
        what = "parameters" if metric == "params" else "MACs per sample"
        how = "per-group minimum" if isinstance(plan, ChannelBudgetPlan) else "per-layer minimum"
        if isinstance(plan, ChannelBudgetPlan) and plan.multiple > 1:
            how += f": blocks of channel_multiple={plan.multiple} channels; a smaller multiple may fit"
        raise BudgetError(
            f"budget of {budget_units} {what} is infeasible: the feasible minimum is "
            f"{plan.min_feasible} ({plan.fixed_params} non-prunable + {how}); "
            f"total is {total}"
        )
