"""Which layers are prunable, in which order they run, and which one is the output layer."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import torch
from torch import nn

from sparsesearch.errors import SparsesearchError
from sparsesearch.strategy import Layer

__all__ = ["PRUNABLE_TYPES", "find_layers", "layer_names"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def run_hooked(model: nn.Module, example_input, handles: list) -> None:
    """One eval-mode, no-grad forward pass; then remove ``handles`` (forward hooks) and
    restore the model's training mode."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _execution_order(model: nn.Module, candidates: list[str], example_input) -> list[str]:
    order: list[str] = []
    handles = []
    modules = dict(model.named_modules())
    for name in candidates:
        def hook(_m, _i, _o, _name=name):
            if _name not in order:
                order.append(_name)
        handles.append(modules[name].register_forward_hook(hook))
    run_hooked(model, example_input, handles)
    # layers that never ran keep their registration order, after the ones that ran
    return order + [n for n in candidates if n not in order]


def find_layers(
    model: nn.Module,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    example_input: torch.Tensor | None = None,
) -> list[Layer]:
    """The prunable layers of ``model`` (Linear and Conv1d/2d/3d by default).

    ``include`` / ``exclude`` are ``fnmatch`` patterns over module names (``"features.*"``).
    With ``example_input``, layers are ordered by execution and the last one to run is the
    output layer; without it, registration order is used.
    """
    include = list(include or ["*"])
    exclude = list(exclude or [])
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
        and name
        and ".parametrizations." not in name
        and _matches(name, include)
        and not _matches(name, exclude)
    ]
    if not names and isinstance(model, PRUNABLE_TYPES) and _matches("", include):
        names = [""]
    if not names:
        raise SparsesearchError(
            f"no prunable layers in {type(model).__name__} "
            f"(Linear/Conv1d/Conv2d/Conv3d; {include=}, {exclude=})"
        )
    if example_input is not None:
        names = _execution_order(model, names, example_input)
    all_prunable = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    last = names[-1] if example_input is not None else all_prunable[-1]
    modules = dict(model.named_modules())
    return [
        Layer(name=n, module=modules[n], weight=modules[n].weight.detach(), is_output=(n == last))
        for n in names
    ]


def layer_names(model: nn.Module, **kwargs) -> list[str]:
    """Names of the prunable layers (same options as :func:`find_layers`)."""
    return [layer.name for layer in find_layers(model, **kwargs)]
