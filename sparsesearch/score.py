"""Score step: run a strategy over the prunable layers, with gradients when it needs data."""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from sparsesearch.errors import SparsesearchError, StrategyError
from sparsesearch.masks import make_permanent, validate_scores
from sparsesearch.strategy import Layer, ScoreContext, Strategy

__all__ = ["accumulate_gradients", "compute_scores", "DEFAULT_GRADIENT_BATCHES"]

DEFAULT_GRADIENT_BATCHES = 8


def _batches(data: Any, batch_size: int, seed: int, device: torch.device) -> Iterable:
    from sparsesearch.data import Splits, load_dataset
    from sparsesearch.train import iterate_batches

    if isinstance(data, str):
        data = load_dataset(data, seed=seed)
    if isinstance(data, Splits):
        data = data.train
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(
        data[0], torch.Tensor
    ):
        data = data[0]
    if isinstance(data, torch.utils.data.Dataset):
        gen = torch.Generator().manual_seed(seed)
        return iterate_batches(data, batch_size, shuffle=True, generator=gen, device=device)
    if isinstance(data, Iterable):  # a DataLoader or any iterable of (x, y)
        return ((x.to(device), y.to(device)) for x, y in data)
    raise SparsesearchError(
        f"data must be a dataset name, a Splits, a torch Dataset or an iterable of (x, y) "
        f"batches, got {type(data).__name__}"
    )


def accumulate_gradients(
    model: nn.Module,
    layers: Sequence[Layer],
    data: Any,
    *,
    num_batches: int = DEFAULT_GRADIENT_BATCHES,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    loss_fn=None,
) -> dict[str, Any]:
    """Gradients of the loss w.r.t. each layer's effective weight over ``num_batches`` batches.

    Works on a copy of the model, so the model itself (weights, BatchNorm statistics,
    gradients) is left untouched. Returns the fields of :class:`ScoreContext` it fills.
    """
    if num_batches < 1:
        raise SparsesearchError(f"num_batches must be >= 1, got {num_batches=}")
    device = torch.device(device)
    work = make_permanent(copy.deepcopy(model)).to(device)
    work.train()
    modules = dict(work.named_modules())
    weights = {layer.name: modules[layer.name].weight for layer in layers}
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    grad_sq = {n: torch.zeros_like(w) for n, w in weights.items()}
    taylor = {n: torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) for n, w in weights.items()}
    loss_fn = loss_fn or nn.functional.cross_entropy
    seen = 0
    for x, y in _batches(data, batch_size, seed, device):
        work.zero_grad(set_to_none=True)
        loss = loss_fn(work(x), y)
        if not torch.isfinite(loss):
            raise SparsesearchError(f"non-finite loss while accumulating gradients (batch {seen})")
        loss.backward()
        for n, w in weights.items():
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            grads[n] += g
            grad_sq[n] += g * g
            taylor[n] += (w.detach() * g).flatten(1).sum(1) ** 2
        seen += 1
        if seen >= num_batches:
            break
    if seen == 0:
        raise SparsesearchError("no training batches to accumulate gradients from")
    cpu = torch.device("cpu")
    return {
        "gradients": {n: (g / seen).to(cpu) for n, g in grads.items()},
        "gradient_squares": {n: (g / seen).to(cpu) for n, g in grad_sq.items()},
        "taylor": {n: t.to(cpu) for n, t in taylor.items()},
        "num_batches": seen,
    }


def expected_shape(strategy: Strategy, layer: Layer) -> tuple[int, ...]:
    if strategy.granularity == "channel":
        return (layer.out_channels,)
    return tuple(layer.weight.shape)


def compute_scores(
    model: nn.Module,
    layers: Sequence[Layer],
    strategy: Strategy,
    *,
    data: Any = None,
    seed: int = 0,
    num_batches: int = DEFAULT_GRADIENT_BATCHES,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    params: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """``{layer name: scores}`` for every layer, validated (shape, finite) and on the CPU.

    Raises :class:`StrategyError` naming the strategy and layer for bad scores, and when a
    strategy that ``requires_data`` gets none. The model and its weights are not modified.
    """
    name = strategy.name or type(strategy).__name__
    fields: dict[str, Any] = {}
    if strategy.requires_data:
        if data is None:
            raise StrategyError(
                f"strategy {name!r} needs data (it scores with gradients): pass data=..."
            )
        fields = accumulate_gradients(
            model, layers, data, num_batches=num_batches, batch_size=batch_size,
            seed=seed, device=device,
        )
    context = ScoreContext(seed=seed, model=model, params=dict(params or {}), **fields)
    scores: dict[str, torch.Tensor] = {}
    for layer in layers:
        fresh = Layer(layer.name, layer.module, layer.module.weight.detach(), layer.is_output)
        raw = strategy.score(fresh, context)
        scores[layer.name] = validate_scores(
            raw, strategy=name, layer=layer.name, expected=expected_shape(strategy, layer)
        ).cpu()
    return scores
