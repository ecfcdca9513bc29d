"""Conformance kit: check a strategy plugin against the strategy contract.

Plugin authors call :func:`check_strategy` from their own tests::

    import sparsesearch.testing

    def test_my_strategy():
        sparsesearch.testing.check_strategy(MyStrategy())

or check every installed strategy (or just those of one distribution)::

    import pytest
    from sparsesearch.testing import check_strategy, parametrize_strategies

    @pytest.mark.parametrize("name", parametrize_strategies(distribution="my-dist"))
    def test_contract(name):
        check_strategy(name)

:func:`check_strategy` scores every layer of a few tiny models (``nn.Linear``, ``Conv1d``,
``Conv2d`` including grouped and depthwise, ``Conv3d``, BatchNorm, a residual block, a
depthwise-separable block) and of the author's own (``models=[(model, example_input)]``),
and raises
:class:`StrategyContractError` (an ``AssertionError``) whose message says what is wrong and how
to fix it. It needs no pytest; pytest is only imported by :func:`strategy_cases`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparsesearch.compact import norm_after
from sparsesearch.errors import PluginFailedError
from sparsesearch.layers import find_layers
from sparsesearch.masks import get_mask, num_to_prune
from sparsesearch.plugins import StrategyInfo, get_strategy, list_strategies, validate_strategy
from sparsesearch.prune import prune
from sparsesearch.score import accumulate_gradients
from sparsesearch.strategy import Layer, ScoreContext, Strategy

__all__ = [
    "StrategyContractError",
    "check_strategy",
    "contract_models",
    "parametrize_strategies",
    "strategy_cases",
]

NUM_CLASSES = 3
BATCH_SIZE = 8
NUM_BATCHES = 2


class StrategyContractError(AssertionError):
    """A strategy breaks the contract; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- tiny models


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6, bias=False), nn.ReLU(),
                         nn.Linear(6, NUM_CLASSES))


def _conv1d() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1, groups=2), nn.ReLU(),  # grouped
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
    )


def _conv2d() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),  # grouped
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise
        nn.Conv2d(8, 6, (1, 3), padding=(0, 1), bias=False), nn.ReLU(),  # no bias, 1x3 kernel
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, NUM_CLASSES),
    )


def _conv3d() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES),
    )


def _batchnorm() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, NUM_CLASSES),
    )


class _Residual(nn.Module):
    """A ResNet basic block between a stem and a head: the addition ties channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(x + self.bn2(self.conv2(y))))


def _depthwise_separable() -> nn.Module:
    """MobileNet style: pointwise expansion, depthwise 3x3, pointwise projection."""
    return nn.Sequential(
        nn.Conv2d(3, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.Conv2d(12, 6, 1, bias=False), nn.BatchNorm2d(6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, NUM_CLASSES),
    )


# name -> (model factory, input shape without the batch dimension)
_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "linear": (_mlp, (6,)),
    "conv1d": (_conv1d, (4, 10)),
    "conv2d": (_conv2d, (4, 6, 6)),
    "conv3d": (_conv3d, (2, 4, 4, 4)),
    "batchnorm": (_batchnorm, (3, 5, 5)),
    "residual": (_Residual, (3, 5, 5)),
    "depthwise-separable": (_depthwise_separable, (3, 5, 5)),
}
MODEL_NAMES = tuple(_MODELS)


def _random_batches(
    shape: Sequence[int], num_classes: int, gen: torch.Generator
) -> Batches:
    return [
        (
            torch.randn((BATCH_SIZE, *shape), generator=gen),
            torch.randint(0, num_classes, (BATCH_SIZE,), generator=gen),
        )
        for _ in range(NUM_BATCHES)
    ]


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def contract_models(seed: int = 0) -> dict[str, tuple[nn.Module, Batches]]:
    """The tiny models :func:`check_strategy` uses, each with a few random ``(x, y)`` batches.

    ``{name: (model, batches)}`` for the names in :data:`MODEL_NAMES`: ``"linear"``,
    ``"conv1d"``, ``"conv2d"`` (grouped, depthwise, bias-free, 1x3 kernel), ``"conv3d"``,
    ``"batchnorm"`` (Conv2d/Linear followed by BatchNorm), ``"residual"`` (a ResNet basic
    block) and ``"depthwise-separable"`` (MobileNet style). The same ``seed`` gives the same
    weights and data.
    """
    out = {}
    for i, (key, (factory, shape)) in enumerate(_MODELS.items()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1009 + i)
            model = factory()
        gen = torch.Generator().manual_seed(seed * 1009 + i)
        out[key] = (model, _random_batches(shape, NUM_CLASSES, gen))
    return out


ModelCase = Any  # nn.Module | (nn.Module, example input or [(x, y), ...]) | a factory of those


def _user_models(
    models: Mapping[str, ModelCase] | Sequence[ModelCase], seed: int
) -> dict[str, tuple[nn.Module, Batches]]:
    """The caller's models as ``{label: (model copy, batches)}``; one clear error otherwise."""
    if isinstance(models, nn.Module):
        raise TypeError(
            "check_strategy(models=...) takes a list of (model, example_input) or "
            "(model, [(x, y), ...]) pairs, not a bare module: models=[(model, x)]"
        )
    if isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], nn.Module):
        models = [models]  # one (model, input) pair
    items = list(models.items()) if isinstance(models, Mapping) else [
        (None, m) for m in models
    ]
    out: dict[str, tuple[nn.Module, Batches]] = {}
    for i, (key, case) in enumerate(items):
        model, data = case if isinstance(case, (tuple, list)) and len(case) == 2 else (case, None)
        label = repr(key) if key is not None else f"models[{i}] ({type(model).__name__})"
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"check_strategy(models=...): {label} is a {type(model).__name__}; pass "
                "nn.Module instances as (model, example_input) or (model, [(x, y), ...])"
            )
        if data is None:
            raise TypeError(
                f"check_strategy(models=...): {label} has no input: pass (model, "
                "example_input), a batch of inputs the model accepts, or (model, [(x, y), ...])"
            )
        gen = torch.Generator().manual_seed(seed * 1009 + 7919 + i)
        if isinstance(data, torch.Tensor):
            x = data if data.shape[0] > 1 else data.expand(BATCH_SIZE, *data.shape[1:]).clone()
            work = copy.deepcopy(model).eval()
            with torch.no_grad():
                out_shape = work(x).shape
            if len(out_shape) != 2:
                raise TypeError(
                    f"check_strategy(models=...): {label} returns shape {tuple(out_shape)}; "
                    "the kit's loss is cross-entropy on (batch, classes) outputs: pass "
                    "(model, [(x, y), ...]) batches that fit your model"
                )
            batches = [
                (x, torch.randint(0, int(out_shape[1]), (x.shape[0],), generator=gen))
                for _ in range(NUM_BATCHES)
            ]
        else:
            batches = [tuple(b) for b in data]
            if not batches or not all(
                len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b) for b in batches
            ):
                raise TypeError(
                    f"check_strategy(models=...): {label}: expected an example input tensor "
                    "or a list of (x, y) tensor batches"
                )
        out[label] = (model, batches)
    return out


# --------------------------------------------------------------------------- helpers


def _describe(module: nn.Module) -> str:
    """``Conv2d(4, 8, k=3, groups=2)`` / ``Linear(6, 8)``: short enough for one line."""
    kind = next(
        (c.__name__ for c in type(module).__mro__ if c in (nn.Linear, nn.Conv1d, nn.Conv2d,
                                                         nn.Conv3d)),
        type(module).__name__,
    )  # "Linear" for a masked ParametrizedLinear too
    if isinstance(module, nn.Linear):
        return f"{kind}({module.in_features}, {module.out_features})"
    if isinstance(module, nn.modules.conv._ConvNd):
        k = module.kernel_size
        kernel = str(k[0]) if len(set(k)) == 1 else str(tuple(k))
        extra = ""
        if module.groups > 1:
            depthwise = module.groups == module.in_channels
            extra = f", groups={module.groups}" + (", depthwise" if depthwise else "")
        if module.bias is None:
            extra += ", bias=False"
        return f"{kind}({module.in_channels}, {module.out_channels}, k={kernel}{extra})"
    return kind


def _where(layer: Layer) -> str:
    return f"{_describe(layer.module)} (layer {layer.name!r})"


def _shape(t: Sequence[int]) -> str:
    t = tuple(int(s) for s in t)
    return "(" + ", ".join(map(str, t)) + ("," if len(t) == 1 else "") + ")"


def _strategy_label(strategy: Strategy) -> str:
    return f"strategy {strategy.name!r} ({type(strategy).__name__})"


def _resolve(strategy: Strategy | StrategyInfo | str) -> Strategy:
    if isinstance(strategy, StrategyInfo):
        return strategy.strategy
    if isinstance(strategy, str):
        return get_strategy(strategy).strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise StrategyContractError(
            f"check_strategy() got the class {strategy.__name__}, not an instance: "
            f"call check_strategy({strategy.__name__}())"
        )
    if not isinstance(strategy, Strategy):
        raise StrategyContractError(
            f"check_strategy() got {type(strategy).__name__}, not a sparsesearch.Strategy: "
            "subclass sparsesearch.Strategy and pass an instance (or a registered name)"
        )
    return strategy


def _check_attributes(strategy: Strategy) -> None:
    """The class attributes, by the registry's own check (one function for both)."""
    validate_strategy(strategy, error=StrategyContractError)


def _expected(strategy: Strategy, layer: Layer) -> tuple[int, ...]:
    if strategy.granularity == "channel":
        return (layer.out_channels,)
    return tuple(layer.weight.shape)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Clones of everything a strategy must not change."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {
            n: (None if p.grad is None else p.grad.detach().clone())
            for n, p in model.named_parameters()
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "modules": [n for n, _ in model.named_modules()],
    }


def _context_snapshot(context: ScoreContext) -> dict[str, dict[str, torch.Tensor]]:
    return {
        field: {k: v.detach().clone() for k, v in getattr(context, field).items()}
        for field in ("gradients", "gradient_squares", "taylor")
    }


def _compare_model(
    strategy: Strategy, layer: Layer, before: Mapping[str, Any], model: nn.Module
) -> None:
    who = f"{_strategy_label(strategy)}: score() for {_where(layer)}"
    fix = (
        "treat layer.weight, layer.module and context.model as read-only: compute on copies "
        "(w = layer.weight.abs(), not layer.weight.abs_(); no .data/.copy_()/in-place ops, no "
        "forward/backward passes on context.model)"
    )
    now = _snapshot(model)
    if now["modules"] != before["modules"] or now["state"].keys() != before["state"].keys():
        raise StrategyContractError(f"{who} added or removed modules, parameters or buffers: {fix}")
    for key, old in before["state"].items():
        new = now["state"][key]
        if new.shape != old.shape or not torch.equal(new, old):
            part = "a buffer"
            if "weight" in key:
                part = "a weight"
            elif key.endswith("bias"):
                part = "a bias"
            raise StrategyContractError(f"{who} modified {part} of the model ({key!r}): {fix}")
    for key, old in before["grads"].items():
        new = now["grads"][key]
        if (old is None) != (new is None) or (
            old is not None and (new.shape != old.shape or not torch.equal(new, old))
        ):
            raise StrategyContractError(
                f"{who} modified the .grad of {key!r} (zero_grad(), backward() or in-place "
                "ops): use context.gradients / context.gradient_squares / context.taylor, which "
                "the engine fills when requires_data = True, and never touch .grad"
            )
    if now["requires_grad"] != before["requires_grad"]:
        raise StrategyContractError(f"{who} changed requires_grad of parameters: {fix}")
    if now["training"] != before["training"]:
        raise StrategyContractError(
            f"{who} switched modules between train() and eval(): {fix}"
        )


def _compare_context(
    strategy: Strategy, layer: Layer, before: Mapping[str, Mapping[str, torch.Tensor]],
    context: ScoreContext,
) -> None:
    for field, tensors in before.items():
        current = getattr(context, field)
        for key, old in tensors.items():
            new = current.get(key)
            if new is None or new.shape != old.shape or not torch.equal(new, old):
                raise StrategyContractError(
                    f"{_strategy_label(strategy)}: score() for {_where(layer)} modified "
                    f"context.{field}[{key!r}] in place: the engine shares these tensors "
                    f"between layers and calls; compute on a copy (g.abs(), not g.abs_())"
                )


def _data_hint(strategy: Strategy, context: ScoreContext, exc: BaseException) -> str:
    """A hint about gradients when the failure looks like it is about them, else ''."""
    text = f"{type(exc).__name__} {exc}".lower()
    if not (isinstance(exc, KeyError) or any(w in text for w in ("grad", "taylor", "none"))):
        return ""
    if not strategy.requires_data:
        return (
            " score() ran with a ScoreContext without gradients because requires_data=False "
            "(the engine fills context.gradients / gradient_squares / taylor only for "
            "strategies with requires_data = True): if score() needs gradients, set "
            "requires_data = True; otherwise do not read them."
        )
    keys = ", ".join(repr(k) for k in list(context.gradients)[:6])
    return (
        " score() ran with requires_data=True and a ScoreContext whose gradients, "
        f"gradient_squares and taylor are keyed by layer name ({keys}): read them as "
        "context.gradients[layer.name] or context.gradient(layer); gradients and "
        "gradient_squares have the weight's shape, taylor has shape (out_channels,)."
    )


def _call_score(strategy: Strategy, layer: Layer, context: ScoreContext) -> Any:
    try:
        return strategy.score(layer, context)
    except NotImplementedError as exc:
        raise StrategyContractError(
            f"{_strategy_label(strategy)}: score() for {_where(layer)} raised "
            f"NotImplementedError({exc}): implement score(self, layer, context) for every "
            "Linear and Conv1d/2d/3d layer (grouped and depthwise convolutions included)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - report any failure as a contract violation
        hint = _data_hint(strategy, context, exc) or (
            " Make score() work for every Linear and Conv1d/2d/3d layer; here layer.weight "
            "has shape (out_channels, in_channels/groups, *kernel) = "
            f"{_shape(layer.weight.shape)}"
        )
        raise StrategyContractError(
            f"{_strategy_label(strategy)}: score() for {_where(layer)} raised "
            f"{type(exc).__name__}: {exc}.{hint}"
        ) from exc


def _check_scores(strategy: Strategy, layer: Layer, scores: Any) -> torch.Tensor:
    who = f"{_strategy_label(strategy)}: score() for {_where(layer)}"
    expected = _expected(strategy, layer)
    if not isinstance(scores, torch.Tensor):
        raise StrategyContractError(
            f"{who} returned {type(scores).__name__}, not a torch.Tensor: return a tensor of "
            f"shape {_shape(expected)} (torch.as_tensor(...) converts arrays and lists)"
        )
    if tuple(scores.shape) != expected:
        if strategy.granularity == "weight":
            fix = (
                "return one score per weight (layer.weight.shape = (out_channels, "
                "in_channels/groups, *kernel)), or set granularity='channel' and return "
                "shape (out_channels,)"
            )
        else:
            fix = (
                "return one score per output channel (reduce over every dim but the first, "
                "e.g. w.flatten(1).sum(1)), or set granularity='weight' and return "
                "layer.weight.shape"
            )
        raise StrategyContractError(
            f"{who} returned shape {_shape(scores.shape)} but "
            f"granularity={strategy.granularity!r} needs {_shape(expected)}: {fix}"
        )
    if scores.dtype.is_complex:
        raise StrategyContractError(
            f"{who} returned a complex tensor ({scores.dtype}): return real scores, "
            "e.g. .abs() of it"
        )
    values = scores.detach().to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        nan = int(torch.isnan(values).sum())
        inf = int(torch.isinf(values).sum())
        raise StrategyContractError(
            f"{who} returned non-finite scores ({nan} NaN, {inf} inf of {values.numel()}): "
            "scores must be finite; guard divisions and logs with an epsilon "
            "(x / (norm + 1e-12), torch.log(x + 1e-12)) or clean up with torch.nan_to_num"
        )
    return values


def _check_deterministic(
    strategy: Strategy, layer: Layer, first: torch.Tensor, second: torch.Tensor, seed: int
) -> None:
    if torch.equal(first, second):
        return
    diff = (first.to(torch.float64) - second.to(torch.float64)).abs()
    changed = int((diff != 0).sum())
    raise StrategyContractError(
        f"{_strategy_label(strategy)}: score() for {_where(layer)} returned different scores "
        f"on two calls with the same context.seed={seed} ({changed} of {first.numel()} "
        f"differ, up to {float(diff.max()):.3g}): the same seed must give the same scores; draw "
        "random numbers from context.generator(layer) (seeded from context.seed and the layer "
        "name), e.g. torch.rand(shape, generator=context.generator(layer)), never from torch's "
        "global RNG, and keep no state between calls"
    )


def _gradient_fields(
    strategy: Strategy, model: nn.Module, layers: Sequence[Layer], batches: list, seed: int
) -> dict[str, Any]:
    if not strategy.requires_data:
        return {}
    return accumulate_gradients(
        model, layers, batches, num_batches=len(batches), batch_size=BATCH_SIZE, seed=seed
    )


def _fresh_context(model: nn.Module, fields: Mapping[str, Any], seed: int) -> ScoreContext:
    """A new context with copies of the gradient fields (one call cannot affect the next)."""
    copied = {
        k: ({n: t.clone() for n, t in v.items()} if isinstance(v, Mapping) else v)
        for k, v in fields.items()
    }
    return ScoreContext(seed=seed, model=model, find_norm=functools.partial(norm_after, model), **copied)


def _fill_grads(model: nn.Module, seed: int) -> None:
    """Give every parameter a .grad, so that a strategy touching .grad is detected."""
    gen = torch.Generator().manual_seed(seed + 17)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _check_layers(strategy: Strategy, key: str, model: nn.Module, batches: list, seed: int) -> None:
    layers = find_layers(model)
    fields = _gradient_fields(strategy, model, layers, batches, seed)
    _fill_grads(model, seed)
    for layer in layers:
        scores = []
        used_global_rng = False
        for _ in range(2):
            context = _fresh_context(model, fields, seed)
            before = _snapshot(model)
            before_context = _context_snapshot(context)
            rng = torch.get_rng_state()
            raw = _call_score(strategy, layer, context)
            used_global_rng |= not torch.equal(rng, torch.get_rng_state())
            scores.append(_check_scores(strategy, layer, raw))
            _compare_model(strategy, layer, before, model)
            _compare_context(strategy, layer, before_context, context)
        _check_deterministic(strategy, layer, scores[0], scores[1], seed)
        if used_global_rng:
            raise StrategyContractError(
                f"{_strategy_label(strategy)}: score() for {_where(layer)} used or reseeded "
                "torch's global random number generator, which changes the user's training "
                "(data order, dropout) behind their back: draw random numbers from "
                "context.generator(layer) instead, e.g. torch.rand(shape, "
                "generator=context.generator(layer))"
            )


def _check_engine(strategy: Strategy, key: str, model: nn.Module, batches: list, seed: int) -> None:
    """sparsesearch.prune() with the strategy masks exact counts: at 0.5, then again at 0.75
    (gradual pruning, as ``prune_steps`` in a search: the second scoring sees masked layers)."""
    data = batches if strategy.requires_data else None
    channel = strategy.granularity == "channel"
    label = _strategy_label(strategy)
    previous: dict[str, torch.Tensor] = {}
    for amount in (0.5, 0.75):
        try:
            prune(model, strategy, amount, data=data, seed=seed,
                  num_batches=len(batches), batch_size=BATCH_SIZE)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, PluginFailedError) and exc.__cause__ is not None:
                exc = exc.__cause__  # the strategy's own exception, not the engine's wrapper
            again = (
                " (the second time, on a model already pruned at 0.5: its layers are masked, "
                "module.weight is then a parametrization, so read layer.weight, the effective "
                "weight, rather than module._parameters or parametrization internals)"
                if previous else ""
            )
            raise StrategyContractError(
                f"{label}: sparsesearch.prune() on {key} at sparsity {amount} "
                f"failed with {type(exc).__name__}: {exc}{again}"
            ) from exc
        for layer in find_layers(model):
            mask = get_mask(layer.module)
            mask = torch.ones_like(layer.weight) if mask is None else mask.detach().clone()
            units = layer.out_channels if channel else layer.weight.numel()
            want = 0 if (channel and layer.is_output) else num_to_prune(amount, units)
            if channel:
                rows = mask.flatten(1)
                if not bool(((rows == 0).all(1) | (rows == 1).all(1)).all()):
                    raise StrategyContractError(
                        f"{label}: after prune() at {amount}, {_where(layer)} has partially "
                        "masked channels although granularity='channel': this is an engine "
                        "bug, please report it"
                    )
                pruned = int((rows == 0).all(1).sum())
            else:
                pruned = int((mask == 0).sum())
            if pruned != want:
                unit = "output channels" if channel else "weights"
                raise StrategyContractError(
                    f"{label}: after prune() at sparsity {amount}, {_where(layer)} has "
                    f"{pruned} pruned {unit} but the engine promises exactly {want} of "
                    f"{units}: return scores of the shape granularity asks for, one per unit"
                )
            old = previous.get(layer.name)
            if old is not None and bool(((old == 0) & (mask != 0)).any()):
                raise StrategyContractError(
                    f"{label}: pruning {_where(layer)} again at {amount} brought back pruned "
                    "weights: this is an engine bug, please report it"
                )
            previous[layer.name] = mask
    with torch.no_grad():
        out = model.eval()(batches[0][0])
    if not bool(torch.isfinite(out).all()):
        raise StrategyContractError(
            f"{label}: {key} gives non-finite outputs after prune(): scores "
            "must be finite and score() must not modify the model"
        )


def check_strategy(
    strategy: Strategy | StrategyInfo | str,
    *,
    seed: int = 0,
    models: Mapping[str, ModelCase] | Sequence[ModelCase] | None = None,
    default_models: bool = True,
) -> None:
    """Check ``strategy`` against the strategy contract; raise :class:`StrategyContractError`.

    ``strategy`` is a :class:`sparsesearch.Strategy` instance (or a registered name, or a
    :class:`sparsesearch.StrategyInfo`). Checked on tiny Linear, Conv1d, Conv2d (grouped,
    depthwise, bias-free), Conv3d, BatchNorm, residual and depthwise-separable models (see
    :func:`contract_models`) and on the caller's ``models``, for every layer:

    * ``name`` / ``granularity`` / ``requires_data`` / ``description`` are valid;
    * ``score()`` returns a ``torch.Tensor`` of shape ``layer.weight.shape`` (granularity
      ``"weight"``) or ``(out_channels,)`` (``"channel"``), with finite values;
    * it works with the context the engine gives it: gradients, gradient squares and Taylor
      terms from :func:`sparsesearch.score.accumulate_gradients` when ``requires_data``, an
      empty one (no gradients) otherwise;
    * it modifies neither the model (weights, biases, buffers, ``.grad``, train/eval mode) nor
      the context, and leaves torch's global RNG alone;
    * it is deterministic: two calls with the same ``context.seed`` give equal scores;
    * ``sparsesearch.prune()`` with it at sparsity 0.5, then again at 0.75 (the second scoring
      sees masked layers, as in gradual pruning), masks exactly ``round(amount × units)``
      weights (or output channels; none of the final layer's) per layer.

    ``models`` adds your own models: a list, or a ``{label: ...}`` dict, of
    ``(model, example_input)`` (a batch of inputs; labels are drawn at random among the
    model's outputs) or ``(model, [(x, y), ...])`` (your batches). They are copied, never
    modified. ``default_models=False`` checks only those.

    Returns ``None`` when all is well. Raises :class:`StrategyContractError` (an
    ``AssertionError``, so pytest shows it as a failure) naming the layer, what is wrong, and
    how to fix it.
    """
    strategy = _resolve(strategy)
    _check_attributes(strategy)
    own = _user_models(models, seed) if models is not None else {}
    if not default_models and not own:
        raise TypeError("check_strategy(default_models=False) needs models=[...] to check")

    def cases() -> dict[str, tuple[nn.Module, Batches]]:
        kit = contract_models(seed) if default_models else {}
        mine = {f"your model {k}": (copy.deepcopy(m), b) for k, (m, b) in own.items()}
        return {**{f"the {k} test model": v for k, v in kit.items()}, **mine}

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        for key, (model, batches) in cases().items():
            _check_layers(strategy, key, model, batches, seed)
        for key, (model, batches) in cases().items():
            _check_engine(strategy, key, model, batches, seed)


def parametrize_strategies(distribution: str | None = None) -> list[str]:
    """Names of the registered strategies (only ``distribution``'s, when given), sorted.

    For ``@pytest.mark.parametrize("name", parametrize_strategies())``, then
    ``check_strategy(name)`` in the test.
    """
    return [
        info.name
        for info in list_strategies()
        if distribution is None or info.distribution == distribution
    ]


def strategy_cases(distribution: str | None = None) -> list[Any]:
    """``pytest.param(strategy, id=name)`` for each registered strategy (see
    :func:`parametrize_strategies`), for ``@pytest.mark.parametrize("strategy", ...)``.

    Imports pytest (only this function does).
    """
    import pytest  # optional: the kit works without pytest (only this function needs it)

    return [
        pytest.param(info.strategy, id=info.name)
        for info in list_strategies()
        if distribution is None or info.distribution == distribution
    ]
