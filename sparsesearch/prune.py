"""``prune()``: score with a strategy, then mask each layer at its exact amount."""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from sparsesearch.compact import DependencyGraph, dependency_graph, dependent_masks, graph_of
from sparsesearch.compact import group_scores as _group_scores
from sparsesearch.errors import SparsesearchError, StrategyError
from sparsesearch.layers import find_layers
from sparsesearch.masks import apply_mask, channel_mask_to_weight, exact_mask, get_mask, num_to_prune
from sparsesearch.plugins import get_strategy
from sparsesearch.score import DEFAULT_GRADIENT_BATCHES, compute_scores
from sparsesearch.strategy import Layer, Strategy

__all__ = ["apply_sparsity", "prune", "resolve_sparsity"]


def resolve_sparsity(
    layers: Sequence[Layer], sparsity: float | Mapping[str, float], granularity: str
) -> dict[str, float]:
    """Per-layer amounts from a float (every layer) or a ``{layer name: amount}`` dict."""
    names = [layer.name for layer in layers]
    if isinstance(sparsity, Mapping):
        unknown = [n for n in sparsity if n not in names]
        if unknown:
            raise SparsesearchError(
                f"no prunable layer named {unknown[0]!r}; prunable layers: {', '.join(names)}"
            )
        amounts = {n: float(sparsity.get(n, 0.0)) for n in names}
    elif isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool):
        amounts = {n: float(sparsity) for n in names}
    else:
        raise SparsesearchError(f"sparsity must be a float or a dict, got {sparsity=}")
    for n, a in amounts.items():
        if not 0.0 <= a < 1.0:
            raise SparsesearchError(f"sparsity for layer {n!r} must be in [0, 1), got {a}")
    if granularity == "channel":
        for layer in layers:
            if layer.is_output and amounts[layer.name] > 0:
                if isinstance(sparsity, Mapping):
                    raise StrategyError(
                        f"channel strategies never remove the output units of the final layer "
                        f"{layer.name!r}; give it sparsity 0"
                    )
                amounts[layer.name] = 0.0
    return amounts


def ensure_graph(model: nn.Module, layers: Sequence[Layer], example_input: Any) -> DependencyGraph | None:
    """The dependency graph recorded on ``layers``' modules; where none is (a model built or
    loaded afresh, e.g. to replay a recipe), it is computed on ``example_input`` and recorded,
    so tied channels are removed together exactly as in the search that planned them. ``None``
    when the model cannot be traced (every layer is then masked on its own, as the planner
    priced it)."""
    for layer in layers:
        g = graph_of(layer.module)
        if g is not None:
            return g
    if example_input is None:
        return None
    try:
        return dependency_graph(model, layers, example_input)
    except SparsesearchError:
        return None


def _channel_groups(layers: Sequence[Layer], groups: Any) -> tuple[list, set[str]]:
    """The dependency groups (of ``groups``, or recorded on the layers' modules) whose members
    are all among ``layers`` with the recorded shapes; and the names they cover."""
    by_name = {layer.name: layer for layer in layers}
    graphs = []
    if isinstance(groups, DependencyGraph):
        graphs = [groups]
    elif groups is None:
        for layer in layers:
            g = graph_of(layer.module)
            if g is not None and all(g is not h for h in graphs):
                graphs.append(g)
    elif groups is not False:
        raise SparsesearchError(f"groups must be a DependencyGraph, None or False, got {type(groups).__name__}")
    found, covered = [], set()
    for graph in graphs:
        for group in graph.groups:
            members = group.members
            if any(n in covered for n in members):
                continue
            if all(
                n in by_name and by_name[n].out_channels == graph.units.get(n) for n in members
            ):
                found.append(group)
                covered.update(members)
    return found, covered


def _mask_channels(module: nn.Module, cmask: torch.Tensor) -> None:
    previous = get_mask(module, "weight")
    wmask = channel_mask_to_weight(cmask, module.weight)
    if previous is not None:  # weights pruned earlier (e.g. unstructured) stay pruned
        wmask = wmask * previous.to(wmask.dtype)
    apply_mask(module, wmask)
    if getattr(module, "bias", None) is not None:
        bmask = cmask.to(module.bias.dtype)
        prev_bias = get_mask(module, "bias")
        if prev_bias is not None:
            bmask = bmask * prev_bias.to(bmask.dtype)
        apply_mask(module, bmask, "bias")


def _pruned_channels(module: nn.Module) -> torch.Tensor | None:
    previous = get_mask(module, "weight")
    if previous is None:
        return None
    return previous.flatten(1).abs().sum(1) == 0


def apply_sparsity(
    layers: Sequence[Layer],
    scores: Mapping[str, torch.Tensor],
    amounts: Mapping[str, float],
    granularity: str,
    *,
    groups: Any = None,
    group_score: str = "sum",
    model: nn.Module | None = None,
    example_input: Any = None,
) -> None:
    """Mask each layer at exactly ``round(amount × units)`` lowest-scoring units.

    Already-pruned units stay pruned (their scores count as lowest), so repeated calls with
    growing amounts prune gradually.

    Channel granularity: channels tied by a dependency group (residual addition, depthwise
    conv, ...; see :func:`sparsesearch.compact.dependency_graph`) are removed together, the
    same indices in every member layer, ranked by the group score
    (:func:`sparsesearch.compact.group_scores` with ``group_score``). ``groups`` is the
    :class:`~sparsesearch.compact.DependencyGraph` to use; by default the one recorded on the
    layers' modules by ``plan_budget`` / ``prune(example_input=...)`` (copies of the model
    carry it), and ``False`` masks every layer on its own. A group removes as many of its
    channels as its most-pruned member asks for (the planner always gives members the same
    amount); it always keeps one. Untied layers are masked exactly as before.

    ``model`` is the model the layers belong to. Given it (the engine always gives it), channel
    masking also masks what the new masks imply: the BatchNorm affine of every channel whose
    input is now zero (:func:`sparsesearch.compact.dependent_masks`, zeros followed on
    ``example_input`` when given), so the masked model computes what the compacted one does.
    Without it only the layers are masked.
    """
    tied: set[str] = set()
    if granularity == "channel":
        if groups is None and model is not None:  # a fresh model: its groups, as planned
            ensure_graph(model, layers, example_input)
        found, tied = _channel_groups(layers, groups)
        by_name = {layer.name: layer for layer in layers}
        for group in found:
            want = 0
            prev = torch.zeros(group.size, dtype=torch.bool)
            for n, rows in group.members.items():
                layer = by_name[n]
                p = num_to_prune(amounts[n], layer.out_channels)
                k = rows.shape[1]
                want = max(want, -(-p // k))
                pc = _pruned_channels(layer.module)
                if pc is not None:
                    prev |= pc[rows].any(1)
            want = min(want, group.size - 1)
            gscore = _group_scores(group, scores, group_score)
            amount = want / group.size
            gmask = exact_mask(
                gscore, amount, previous=(~prev).to(torch.float64) if bool(prev.any()) else None
            )
            # exact_mask rounds amount * size back to ``want``
            for n, rows in group.members.items():
                module = by_name[n].module
                cmask = torch.ones(by_name[n].out_channels, dtype=module.weight.dtype)
                drop = rows[gmask == 0].flatten()
                cmask[drop] = 0
                pc = _pruned_channels(module)
                if pc is not None:
                    cmask[pc] = 0
                _mask_channels(module, cmask)
    for layer in layers:
        if layer.name in tied:
            continue
        module = layer.module
        amount = amounts[layer.name]
        previous = get_mask(module, "weight")
        if granularity == "channel":
            prev_channels = None
            if previous is not None:
                prev_channels = (previous.flatten(1).abs().sum(1) > 0).to(previous.dtype)
            cmask = exact_mask(scores[layer.name], amount, previous=prev_channels)
            _mask_channels(module, cmask)
        else:
            if amount == 0 and previous is None:
                continue
            mask = exact_mask(scores[layer.name], amount, previous=previous)
            apply_mask(module, mask)
    if granularity == "channel" and model is not None:
        # a masked filter's BatchNorm would output its shift: mask that too
        dependent_masks(model, example_input)


def prune(
    model: nn.Module,
    strategy: str | Strategy = "magnitude",
    sparsity: float | Mapping[str, float] = 0.5,
    *,
    data: Any = None,
    seed: int = 0,
    scope: str = "layer",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    example_input: torch.Tensor | None = None,
    num_batches: int = DEFAULT_GRADIENT_BATCHES,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    params: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Prune ``model`` in place with ``strategy`` and return it.

    ``sparsity`` is the fraction of each layer's weights (or output channels) to remove: one
    float for every prunable layer, or ``{layer name: amount}``. With ``scope="global"`` a
    float is instead the overall fraction of prunable units, distributed by one threshold
    across layers on the strategy's scores (global magnitude, the standard baseline).
    Strategies with ``requires_data`` need ``data`` (a dataset name, a ``Splits``, a torch
    Dataset or an iterable of ``(x, y)`` batches).
    """
    info = get_strategy(strategy)
    strat = info.strategy
    if scope not in ("layer", "global"):
        raise SparsesearchError(f"scope must be 'layer' or 'global', got {scope=}")
    layers = find_layers(model, include=include, exclude=exclude, example_input=example_input)
    # check the sparsity before scoring (scoring may cost gradient passes)
    if scope == "global":
        if isinstance(sparsity, Mapping) or not isinstance(sparsity, numbers.Real) or isinstance(
            sparsity, bool
        ):
            raise SparsesearchError(
                f"scope='global' takes one float sparsity, got {sparsity=}"
            )
        if not 0.0 <= float(sparsity) < 1.0:
            raise SparsesearchError(f"sparsity must be in [0, 1), got {sparsity=}")
    else:
        amounts = resolve_sparsity(layers, sparsity, strat.granularity)
    graph = None
    if strat.granularity == "channel" and example_input is not None:
        try:  # tied channels are removed together; strategies see the graph in their context
            graph = dependency_graph(model, layers, example_input)
        except SparsesearchError:
            graph = None  # not traceable: every layer is masked on its own
    scores = compute_scores(
        model, layers, strat, data=data, seed=seed, num_batches=num_batches,
        batch_size=batch_size, device=device, params=params,
    )
    if scope == "global":
        amounts = global_amounts(layers, scores, float(sparsity), strat.granularity, groups=graph)
    apply_sparsity(
        layers, scores, amounts, strat.granularity, groups=graph, model=model, example_input=example_input
    )
    return model


def global_amounts(
    layers: Sequence[Layer], scores: Mapping[str, torch.Tensor], sparsity: float, granularity: str,
    *, groups: Any = None, group_score: str = "sum",
) -> dict[str, float]:
    """Per-layer amounts of one global threshold removing ``sparsity`` of all prunable units.

    Channel granularity ranks dependency-group channels by their group score (tied layers
    get the same amount; a group channel counts as all the channels it removes) and stops
    before the removed channels exceed ``round(sparsity × channels)``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise SparsesearchError(f"sparsity must be in [0, 1), got {sparsity=}")
    eligible = [
        layer for layer in layers if not (granularity == "channel" and layer.is_output)
    ]
    amounts = {layer.name: 0.0 for layer in layers}
    if not eligible:
        return amounts
    found, tied = ([], set())
    if granularity == "channel":
        found, tied = _channel_groups(layers, groups)
        found = [g for g in found if all(n in {l.name for l in eligible} for n in g.members)]
        tied = {n for g in found for n in g.members}
    single = [layer for layer in eligible if layer.name not in tied]
    units: list[torch.Tensor] = []  # per ranked unit: (score, owner index, channels it removes)
    owners: list[tuple[str, ...]] = []
    weights: list[int] = []
    for layer in single:
        units.append(scores[layer.name].flatten().to(torch.float64))
        owners.append((layer.name,))
        weights.append(1)
    for g in found:
        units.append(_group_scores(g, scores, group_score))
        owners.append(tuple(g.members))
        weights.append(sum(int(r.shape[1]) for r in g.members.values()))
    total = sum(u.numel() * w for u, w in zip(units, weights))
    k = int(round(sparsity * total))
    all_scores = torch.cat(units)
    owner = torch.cat([torch.full((u.numel(),), i) for i, u in enumerate(units)])
    order = torch.argsort(all_scores, stable=True)
    if all(w == 1 for w in weights):
        taken = order[:k]
    else:
        cost = torch.tensor(weights, dtype=torch.long)[owner[order]]
        taken = order[torch.cumsum(cost, 0) <= k]
    counts = torch.bincount(owner[taken], minlength=len(units))
    for i, u in enumerate(units):
        n = u.numel()
        frac = min(int(counts[i]), n - 1) / n
        for name in owners[i]:
            amounts[name] = frac
    return amounts
