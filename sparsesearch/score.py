"""Score step: run a strategy over the prunable layers, with gradients when it needs data."""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from sparsesearch import plugins
from sparsesearch.compact import norm_after
from sparsesearch.data import load_dataset
from sparsesearch.errors import PluginFailedError, SparsesearchError, StrategyError
from sparsesearch.masks import make_permanent
from sparsesearch.strategy import Layer, ScoreContext, Strategy
from sparsesearch.train import iterate_batches, seeded_rng

__all__ = ["accumulate_gradients", "compute_scores", "DEFAULT_GRADIENT_BATCHES"]

DEFAULT_GRADIENT_BATCHES = 8


def _is_tensor_pair(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    )


def _batches(data: Any, batch_size: int, seed: int, device: torch.device) -> Iterable:
    if isinstance(data, str):
        data = load_dataset(data, seed=seed)
    data_module = sys.modules.get("sparsesearch.data")
    splits_type = getattr(data_module, "Splits", None)
    if splits_type is not None and isinstance(data, splits_type):
        data = data.train
    # (train, val[, test]) datasets: score on train. A list of 2-3 (x, y) batches is not this.
    if (
        isinstance(data, (tuple, list))
        and len(data) in (2, 3)
        and all(isinstance(d, torch.utils.data.Dataset) for d in data)
    ):
        data = data[0]
    if isinstance(data, torch.utils.data.Dataset):
        gen = torch.Generator().manual_seed(seed)
        return iterate_batches(data, batch_size, shuffle=True, generator=gen, device=device)
    if _is_tensor_pair(data):  # one (x, y) batch
        data = [data]
    if isinstance(data, Iterable):  # a DataLoader or any iterable of (x, y)
        return _checked_pairs(data, device)
    raise SparsesearchError(
        f"data must be a dataset name, a Splits, a torch Dataset or an iterable of (x, y) "
        f"batches, got {type(data).__name__}"
    )


def _checked_pairs(data: Iterable, device: torch.device) -> Iterable:
    for i, batch in enumerate(data):
        if not _is_tensor_pair(batch):
            raise SparsesearchError(
                f"data batch {i} is a {type(batch).__name__}, expected an (x, y) pair of tensors"
            )
        x, y = batch
        yield x.to(device), y.to(device)


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
    # seeded and isolated: dropout etc. give the same gradients for the same seed, and the
    # caller's global RNG state is left as it was
    with seeded_rng(seed, device):
        for x, y in _batches(data, batch_size, seed, device):
            work.zero_grad(set_to_none=True)
            loss = loss_fn(work(x), y)
            if not torch.isfinite(loss):
                raise SparsesearchError(
                    f"non-finite loss while accumulating gradients (batch {seen})"
                )
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

    When ``strategy.score()`` raises or returns invalid scores (not a tensor, wrong shape,
    NaN, inf), raises :class:`~sparsesearch.errors.PluginFailedError` (a
    :class:`StrategyError`) naming the strategy, its distribution and the layer, with the
    plugin's exception chained; a :class:`StrategyError` when a strategy that
    ``requires_data`` gets none. The model and its weights are not modified.
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
    context = ScoreContext(seed=seed, model=model, params=dict(params or {}),
                           find_norm=functools.partial(norm_after, model), **fields)
    scores: dict[str, torch.Tensor] = {}
    for layer in layers:
        fresh = Layer(layer.name, layer.module, layer.module.weight.detach(), layer.is_output)
        try:
            raw = strategy.score(fresh, context)
        except Exception as exc:  # noqa: BLE001 - the plugin's bug: name it, keep its traceback
            raise _failure(
                strategy, layer.name, f"{type(exc).__name__}: {exc}"
            ) from exc
        except SystemExit as exc:  # sys.exit() in a plugin would end the study with no word
            raise _failure(strategy, layer.name, f"it called sys.exit({exc.code!r})") from exc
        scores[layer.name] = check_scores(raw, strategy, layer.name,
                                          expected_shape(strategy, layer)).cpu()
    return scores


def _failure(strategy: Strategy, layer: str, what: str) -> PluginFailedError:
    """``strategy 'foo' (distribution foo-plugin 1.0) failed on layer 'fc1': <what>``."""
    source = plugins.strategy_source(strategy)
    return PluginFailedError(
        f"{plugins.describe_strategy(strategy)} failed on layer {layer!r}: {what}",
        strategy=strategy.name or type(strategy).__name__, layer=layer,
        plugin=None if source is None else source.plugin,
        distribution=None if source is None else source.distribution,
    )


def check_scores(
    scores: Any, strategy: Strategy, layer: str, expected: tuple[int, ...]
) -> torch.Tensor:
    """``scores`` detached, or a :class:`PluginFailedError` naming strategy, distribution and
    layer: not a tensor, the wrong shape, complex, NaN or infinite values."""
    if not isinstance(scores, torch.Tensor):
        raise _failure(
            strategy, layer,
            f"score() returned {type(scores).__name__}, expected a torch.Tensor of shape "
            f"{expected}",
        )
    if tuple(scores.shape) != tuple(expected):
        raise _failure(
            strategy, layer,
            f"score() returned scores of shape {tuple(scores.shape)}, expected {expected} "
            f"(granularity={strategy.granularity!r})",
        )
    if scores.dtype.is_complex:
        raise _failure(strategy, layer, f"score() returned {scores.dtype} scores, expected real numbers")
    values = scores.detach()
    finite = torch.isfinite(values.to(torch.float64))
    if not bool(finite.all()):
        nan = int(torch.isnan(values.to(torch.float64)).sum())
        raise _failure(
            strategy, layer,
            f"score() returned non-finite scores ({nan} NaN, {int((~finite).sum()) - nan} "
            f"infinite of {values.numel()})",
        )
    return values
