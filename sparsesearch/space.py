"""The search space: which retrain settings and allocations a study searches.

Each dimension is either fixed (a scalar, or a one-element list) or searched: a two-element
``[low, high]`` range for numbers (learning rate and weight decay on a log scale), a list of
choices for ``optimizer``. Unknown keys are refused naming the closest valid one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from sparsesearch.budget import check_channel_multiple
from sparsesearch.errors import SparsesearchError, did_you_mean
from sparsesearch.options import NUMBER_OR_RANGE as _NUMBER_OR_RANGE, option

__all__ = ["SearchSpace"]

Range = tuple[float, float]

ALLOCATION_MODES = ("family", "heuristics", "layers")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Search dimensions. Numbers: a scalar (fixed) or ``(low, high)`` (searched).

    Attributes:
        lr: fine-tuning learning rate, log scale.
        epochs: fine-tuning epochs of a screening trial (int; ``None``: at least 3 epochs and
            64 optimizer steps, see :meth:`resolve`). Finalists train longer (the compute
            budget decides).
        optimizer: ``"sgd"`` (with momentum) and/or ``"adamw"``; a list is a choice.
        weight_decay: log scale when a range with low > 0; ``0`` = off.
        prune_steps: 1 = one-shot; k = k rounds of prune + retrain.
        kd_weight: knowledge distillation weight from the dense model, 0 = off.
        kd_temperature: distillation temperature.
        allocation: how a trial chooses its per-layer sparsity. ``"family"`` (default, also
            ``True``): a heuristic (``alloc:heuristic``, one of the study's heuristics) and a
            temperature (``alloc:temperature`` τ): the heuristic's per-layer densities raised
            to τ and projected onto the budget (τ = 0 is uniform, τ = 1 the heuristic
            exactly, τ > 1 sharper). Two dimensions however deep the model. ``"heuristics"``
            (also ``False``): the heuristic only (τ = 1). ``"layers"``: one free relative
            density per layer (``density:NAME``), for shallow models.
        alloc_temperature: the range of τ in ``"family"`` mode.
        warmup: share of the optimizer steps with a linear learning-rate warm-up.
        min_sparsity / max_sparsity: per-layer limits every allocation respects.
        channel_multiple: structured (channel) allocations keep a multiple of this many
            channels per dependency group, or all of them (default 1: any count).
        batch_size: fine-tuning batch size (fixed).
        heuristic_lrs: learning rates each heuristic seed is enqueued at (default: the
            geometric middle of the ``lr`` range, or the fixed ``lr``).
    """

    lr: float | Range = option((3e-4, 1e-2), kind=_NUMBER_OR_RANGE, doc=(
        "fine-tuning learning rate, log scale (default [3e-4, 1e-2], for AdamW)"))
    epochs: int | tuple[int, int] | None = option(None, kind=_NUMBER_OR_RANGE, doc=(
        "epochs of a screening trial (default: at least 3 and 64 optimizer steps); finalists "
        "train longer ([compute])"))
    optimizer: str | tuple[str, ...] = option("adamw", kind="str or list", doc=(
        "'adamw' (default), 'sgd' (momentum 0.9; wants an lr range like [0.01, 0.2]), or a list "
        "to choose from"))
    weight_decay: float | Range = option(0.0, kind=_NUMBER_OR_RANGE, doc=(
        "fine-tuning weight decay, log scale when low > 0 (default 0)"))
    prune_steps: int | tuple[int, int] = option(1, kind=_NUMBER_OR_RANGE, doc=(
        "1 = one-shot; k = k rounds of prune + retrain (default 1)"))
    kd_weight: float | Range = option(0.0, kind=_NUMBER_OR_RANGE, doc=(
        "distillation weight from the dense model, 0 = off (default 0)"))
    kd_temperature: float | Range = option(4.0, kind=_NUMBER_OR_RANGE, doc=(
        "distillation temperature (default 4)"))
    allocation: bool | str = option("family", kind="allocation", doc=(
        "'family' (default: heuristic × temperature, two dimensions), 'heuristics' (or false), "
        "or 'layers' (one density per layer)"))
    alloc_temperature: Range = option((0.0, 2.0), kind=_NUMBER_OR_RANGE, doc=(
        "temperature range of the 'family' allocation (default [0, 2]; 0 = uniform, 1 = the "
        "heuristic)"))
    warmup: float = option(0.05, kind="fraction", doc=(
        "share of the optimizer steps with a linear learning-rate warm-up (default 0.05)"))
    min_sparsity: float = option(0.0, kind="number", doc=(
        "smallest per-layer sparsity of every allocation (default 0)"))
    max_sparsity: float = option(0.999, kind="number", doc=(
        "largest per-layer sparsity of every allocation (default 0.999)"))
    channel_multiple: int = option(1, kind="int>=1", doc=(
        "channel strategies: every layer (dependency group) keeps a multiple of this many "
        "channels, or all of them, within min_sparsity/max_sparsity (rounded inwards; where the "
        "limits hold no multiple, the most they allow) (default 1; 8 or 16 make the pruned model "
        "faster on CPUs and GPUs, whose kernels work on blocks of channels)"))
    batch_size: int = option(128, kind="int>=1", doc="fine-tuning batch size (default 128)")
    heuristic_lrs: tuple[float, ...] | None = option(None, kind="list", doc=(
        "learning rates each heuristic seed is enqueued at (default: one, three quarters up the "
        "lr range)"))

    @classmethod
    def from_mapping(cls, space: Mapping[str, Any] | "SearchSpace" | None) -> "SearchSpace":
        if space is None:
            return cls()
        if isinstance(space, SearchSpace):
            return space
        valid = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in space.items():
            if key not in valid:
                raise SparsesearchError(f"unknown search space key {key!r}{did_you_mean(key, valid)}")
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(value, tuple) and len(value) == 1 and key not in ("heuristic_lrs", "alloc_temperature"):
                value = value[0]
            kwargs[key] = value
        return cls(**kwargs)

    def resolve(self, n_train: int) -> "SearchSpace":
        """This space with ``epochs`` filled in for a training split of ``n_train`` samples."""
        if self.epochs is not None:
            return self
        steps = max(1, math.ceil(n_train / self.batch_size))
        return dataclasses.replace(self, epochs=max(3, math.ceil(64 / steps)))

    def __post_init__(self) -> None:
        dims = ("lr", "epochs", "weight_decay", "prune_steps", "kd_weight", "kd_temperature")
        for name in [d for d in dims if not (d == "epochs" and self.epochs is None)]:
            value = getattr(self, name)
            if isinstance(value, tuple):
                if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
                    raise SparsesearchError(f"{name} must be a number or [low, high], got {value!r}")
                lo, hi = value
                if lo > hi:
                    raise SparsesearchError(f"{name} range has low > high: {value!r}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SparsesearchError(f"{name} must be a number or [low, high], got {value!r}")
        for name, lo_ok in (("lr", lambda v: v > 0), ("epochs", lambda v: v >= 0),
                            ("weight_decay", lambda v: v >= 0), ("prune_steps", lambda v: v >= 1),
                            ("kd_weight", lambda v: 0 <= v <= 1), ("kd_temperature", lambda v: v > 0)):
            for v in (self._values(name) if getattr(self, name) is not None else ()):
                if not lo_ok(v):
                    raise SparsesearchError(f"search space {name} out of range: {name}={getattr(self, name)!r}")
        for opt in self.optimizers:
            if opt not in ("sgd", "adamw"):
                raise SparsesearchError(f"unknown optimizer {opt!r}; use 'sgd' or 'adamw'")
        object.__setattr__(self, "channel_multiple", check_channel_multiple(self.channel_multiple))
        if not 0 <= self.min_sparsity <= self.max_sparsity < 1:
            raise SparsesearchError(
                f"need 0 <= min_sparsity <= max_sparsity < 1, got "
                f"min_sparsity={self.min_sparsity!r}, max_sparsity={self.max_sparsity!r}"
            )
        mode = {True: "family", False: "heuristics"}.get(self.allocation, self.allocation)  # type: ignore[call-overload]
        if mode not in ALLOCATION_MODES:
            raise SparsesearchError(
                f"allocation must be one of {', '.join(ALLOCATION_MODES)} (or true/false), "
                f"got allocation={self.allocation!r}"
            )
        object.__setattr__(self, "allocation", mode)
        t = self.alloc_temperature
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = (float(t), float(t))
        if not (isinstance(t, tuple) and len(t) == 2 and all(isinstance(v, (int, float)) for v in t)
                and 0 <= t[0] <= t[1]):
            raise SparsesearchError(f"alloc_temperature must be [low, high] with 0 <= low <= high, got {t!r}")
        object.__setattr__(self, "alloc_temperature", (float(t[0]), float(t[1])))
        if not 0.0 <= self.warmup < 1.0:
            raise SparsesearchError(f"warmup must be in [0, 1), got warmup={self.warmup!r}")
        if self.batch_size < 1:
            raise SparsesearchError(f"batch_size must be >= 1, got batch_size={self.batch_size!r}")

    def _values(self, name: str) -> tuple[float, ...]:
        v = getattr(self, name)
        return tuple(v) if isinstance(v, tuple) else (v,)

    @property
    def optimizers(self) -> tuple[str, ...]:
        return self.optimizer if isinstance(self.optimizer, tuple) else (self.optimizer,)

    def is_searched(self, name: str) -> bool:
        if name == "optimizer":
            return len(self.optimizers) > 1
        v = getattr(self, name)
        return isinstance(v, tuple) and v[0] != v[1]

    def searched(self) -> list[str]:
        dims = ["lr", "epochs", "optimizer", "weight_decay", "prune_steps", "kd_weight", "kd_temperature"]
        return [d for d in dims if self.is_searched(d)]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Retrain settings for one Optuna trial (searched dims suggested, fixed ones as is)."""
        out: dict[str, Any] = {}
        for name, kind in (("lr", "log"), ("weight_decay", "log"), ("kd_weight", "float"),
                           ("kd_temperature", "float"), ("epochs", "int"), ("prune_steps", "int")):
            v = getattr(self, name)
            if not self.is_searched(name):
                out[name] = v[0] if isinstance(v, tuple) else v
            elif kind == "int":
                out[name] = trial.suggest_int(name, int(v[0]), int(v[1]))
            elif kind == "log" and v[0] > 0:
                out[name] = trial.suggest_float(name, float(v[0]), float(v[1]), log=True)
            else:
                out[name] = trial.suggest_float(name, float(v[0]), float(v[1]))
        out["optimizer"] = (
            trial.suggest_categorical("optimizer", list(self.optimizers))
            if self.is_searched("optimizer") else self.optimizers[0]
        )
        out["batch_size"] = self.batch_size
        out["warmup"] = self.warmup
        return out

    def seed_values(self) -> list[dict[str, Any]]:
        """Settings the heuristic seeds are enqueued with: one dict per learning rate.
        Searched dims take their most generous / neutral value (max epochs, no KD)."""
        base: dict[str, Any] = {}
        for name in ("epochs", "weight_decay", "prune_steps", "kd_weight", "kd_temperature"):
            v = getattr(self, name)
            if self.is_searched(name):
                base[name] = {"epochs": v[1], "weight_decay": v[0], "prune_steps": v[0],
                              "kd_weight": v[0], "kd_temperature": (v[0] + v[1]) / 2}[name]
        if self.is_searched("optimizer"):
            base["optimizer"] = self.optimizers[0]
        if self.heuristic_lrs is not None:
            lrs = list(self.heuristic_lrs)
        elif self.is_searched("lr"):
            lo, hi = self.lr  # type: ignore[misc]
            lrs = [lo * (hi / lo) ** 0.75]  # one rate, upper part of the range: short screens need it
        else:
            lrs = [None]
        out = []
        for lr in lrs:
            d = dict(base)
            if lr is not None and self.is_searched("lr"):
                lo, hi = self.lr  # type: ignore[misc]
                d["lr"] = min(max(float(lr), lo), hi)
            out.append(d)
        # different fixed lr values are only possible when lr is searched
        unique = []
        for d in out:
            if d not in unique:
                unique.append(d)
        return unique

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

