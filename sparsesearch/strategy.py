"""What a strategy plugin sees: the :class:`Strategy` base class and the types passed to it.

Strategies only *score*. The engine (``sparsesearch.masks``) turns scores into masks at the
exact per-layer amount, applies and keeps them, and counts parameters; a strategy never touches
masks or the budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import nn

from sparsesearch.errors import StrategyError

Granularity = Literal["weight", "channel"]

__all__ = ["Granularity", "Layer", "ScoreContext", "Strategy"]


GRAPH_ATTR = "_sparsesearch_graph"  # where compact.dependency_graph records a model's graph


@dataclasses.dataclass(frozen=True)
class Layer:
    """One prunable layer, as the engine hands it to :meth:`Strategy.score`.

    Attributes:
        name: qualified module name in the model (``"features.0"``).
        module: the ``nn.Linear`` / ``nn.Conv*d`` module itself. Read it; never modify it.
        weight: the layer's current effective weight, detached (``out, in/groups, *kernel``).
        is_output: True for the model's final layer (its output units are the classes).
    """

    name: str
    module: nn.Module
    weight: torch.Tensor
    is_output: bool = False

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.module, "bias", None)
        return None if bias is None else bias.detach()


@dataclasses.dataclass(frozen=True)
class ScoreContext:
    """Everything besides the layer that a strategy may use. New fields get defaults, so
    adding one never breaks an existing plugin: read the attributes you need, ignore the rest.

    Attributes:
        seed: seed for any randomness; the same seed must give the same scores.
        model: the whole model (read only), e.g. for strategies that look at neighbours.
        gradients: ``{layer name: ∂L/∂w averaged over batches}``; empty unless the strategy
            sets ``requires_data = True``.
        gradient_squares: ``{layer name: mean over batches of (∂L/∂w)²}``, same conditions.
        taylor: ``{layer name: Σ over batches of (Σ over each output channel of w·∂L/∂w)²}``,
            shape ``(out_channels,)``, the first-order Taylor channel importance (Molchanov
            et al. 2019); same conditions.
        num_batches: how many training batches the gradients were accumulated over.
        params: strategy-specific hyperparameters (from the search space hook), by name.
        graph: the model's :class:`sparsesearch.compact.DependencyGraph` when the engine has
            one (``None``: the one recorded on the layer's module is used, see :meth:`group`).
    """

    seed: int = 0
    model: nn.Module | None = None
    gradients: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    gradient_squares: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    taylor: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    num_batches: int = 0
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    graph: Any = None
    find_norm: Any = None  # the engine's norm_after(model, layer) when it gave no graph

    # -- the model's graph (structured strategies) ---------------------------------------------

    def _graph(self, layer: Layer | str):
        # the contract does not import the engine: the graph is the engine's object, given in
        # ``graph`` or recorded on the module under GRAPH_ATTR by compact.dependency_graph
        if self.graph is not None:
            return self.graph
        module = layer.module if isinstance(layer, Layer) else None
        if module is None and self.model is not None:
            module = dict(self.model.named_modules()).get(layer)
        return module.__dict__.get(GRAPH_ATTR) if module is not None else None

    def group(self, layer: Layer | str) -> tuple[str, ...]:
        """Names of the prunable layers whose output channels are tied to ``layer``'s (a
        residual addition, a depthwise conv, ...), ``layer`` included. The engine removes the
        same channels from all of them, ranked by the group score of their scores. Without a
        dependency graph (a model ``torch.fx`` cannot trace, ``prune()`` without
        ``example_input``): the layer alone."""
        name = layer if isinstance(layer, str) else layer.name
        graph = self._graph(layer)
        tied = graph.tied(name) if graph is not None else ()
        return tied or (name,)

    def consumers(self, layer: Layer | str) -> tuple[str, ...]:
        """Names of the Conv / Linear modules that read ``layer``'s output channels (their
        input slices go with a removed channel); ``()`` without a dependency graph."""
        name = layer if isinstance(layer, str) else layer.name
        graph = self._graph(layer)
        return tuple(graph.consumers.get(name, ())) if graph is not None else ()

    def norm(self, layer: Layer | str) -> nn.Module | None:
        """The normalisation module (BatchNorm, ...) applied right after ``layer``, or ``None``.
        Read only, like ``model``. Found without a dependency graph too: the engine then gives
        ``find_norm`` (a ``torch.fx`` trace of ``model``)."""
        name = layer if isinstance(layer, str) else layer.name
        graph = self._graph(layer)
        target = graph.norms.get(name) if graph is not None else None
        if graph is None and self.model is not None and self.find_norm is not None:
            target = self.find_norm(name)
        if target is None or self.model is None:
            return None
        return dict(self.model.named_modules()).get(target)

    def generator(self, layer: Layer | str) -> torch.Generator:
        """A CPU generator seeded from ``seed`` and the layer name (stable across runs)."""
        name = layer if isinstance(layer, str) else layer.name
        mixed = self.seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))
        return torch.Generator().manual_seed(mixed % (2**63 - 1))

    def gradient(self, layer: Layer | str) -> torch.Tensor:
        """Accumulated gradient of ``layer``; a clear error when the engine gathered none."""
        name = layer if isinstance(layer, str) else layer.name
        try:
            return self.gradients[name]
        except KeyError:
            raise StrategyError(
                f"no gradient for layer {name!r}: set requires_data = True on the strategy "
                "and pass data to prune()/search()"
            ) from None


class Strategy:
    """Base class of pruning strategies. Subclass it, set the class attributes, implement
    :meth:`score`, and register an instance from the ``sparsesearch_register_strategies`` hook.

    Class attributes:
        name: unique registry name (``"magnitude"``); what users type.
        granularity: ``"weight"`` (one score per weight, unstructured) or ``"channel"`` (one
            score per output channel, structured; the channel's bias goes with it, and
            channels tied to other layers' by a residual addition or a depthwise conv are
            removed together, ranked by the group score; see :meth:`ScoreContext.group`).
        requires_data: True when :meth:`score` needs gradients; the engine then accumulates
            them over training batches and passes them in the :class:`ScoreContext`.
        description: one line for ``sparsesearch strategies``.
    """

    name: ClassVar[str] = ""
    granularity: ClassVar[Granularity] = "weight"
    requires_data: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def score(self, layer: Layer, context: ScoreContext) -> torch.Tensor:
        """Return importance scores for ``layer`` (higher = keep).

        Shape: ``layer.weight.shape`` for ``granularity="weight"``; ``(layer.out_channels,)``
        for ``granularity="channel"``. Finite values only. Must not modify the layer, its
        weights or its gradients, and must be deterministic for a given ``context.seed``.
        """
        raise NotImplementedError(f"{type(self).__name__}.score is not implemented")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.granularity})>"
