"""The compute budget of a study and how it is spent: cheap screening, then full fidelity.

A study has two budgets: the parameter (or MAC) budget every trial meets, and a *compute*
budget: fine-tuning epochs over the training split, summed over every trial of the study,
finalists included (the dense model's training is counted apart, in ``dense_epochs``).

The compute is spent in two phases:

1. **Screening** (``1 - final_share`` of the budget): trials of ``space.epochs`` one-shot
   epochs each, pruned by successive halving (Optuna's ``SuccessiveHalvingPruner``: rungs at
   ``min_resource · reduction_factor^k`` epochs), so most candidates cost one epoch and only the
   promising reach the full screening length. Screening stops when its share is spent; a trial
   that would overrun it is stopped (PRUNED, reason "compute budget spent").
2. **Finalists** (``final_share``): the ``finalists`` best COMPLETE screening trials are
   retrained from the dense model with the full regime, once per learning-rate scale of
   ``final_lr_scales`` (default: once, at the screening rate): ``final_share · budget /
   (finalists · len(final_lr_scales))`` epochs each, gradual pruning (Zhu & Gupta, ``final_prune_steps`` events over the first
   ``prune_window`` of the epochs, one warm-up + cosine schedule) and optional distillation.
   The final model is chosen among them on validation (see :func:`choose_final`).

Every trial records the epochs it trained (user attribute ``epochs``); the study the total
(``epochs_trained``). With one worker the total never exceeds the budget; with several, each
worker may overrun it by at most the epoch in flight when another worker spent the last of it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from sparsesearch import record
from sparsesearch.errors import SparsesearchError, did_you_mean
from sparsesearch.options import option

__all__ = ["ComputeBudget", "auto_dense_epochs", "choose_final", "close_to_best", "epochs_spent", "fastest",
           "recorded_latency", "screen_ranking", "standard_error"]

MIN_DENSE_STEPS = 300  # optimizer steps the automatic dense training takes at least
DENSE_EPOCHS_MIN = 15
COMPUTE_PER_DENSE = 4  # the automatic compute budget: 4 × the dense model's epochs


def auto_dense_epochs(n_train: int, batch_size: int) -> int:
    """Dense epochs when not given: at least 15, and at least 300 optimizer steps (a small
    tabular set gets more epochs than MNIST, which gets more than CIFAR)."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(DENSE_EPOCHS_MIN, math.ceil(MIN_DENSE_STEPS / steps_per_epoch))


@dataclasses.dataclass(frozen=True)
class ComputeBudget:
    """Fine-tuning compute of a study, in epochs over the training split.

    Attributes:
        epochs: the whole study's fine-tuning epochs (screening + finalists); ``None`` =
            4 × the dense training's epochs (:func:`auto_dense_epochs` when the model comes
            trained).
        final_share: share of ``epochs`` reserved for the finalists (0 = screening only).
        finalists: how many screening trials are retrained at full fidelity.
        final_lr_scales: each finalist is retrained once per scale, at its screening learning
            rate times the scale: short one-shot screens favour higher rates than a long
            gradual schedule does, so the final rate is re-chosen at full fidelity (on
            validation, with the other finalists). ``(1.0,)`` keeps the screening rate.
        final_prune_steps: prune events of a finalist (``None``: one per 4 epochs, 2…8).
        final_kd_weight / final_kd_temperature: distillation from the dense model in the
            finalists' training (0 = off).
        prune_window: share of a finalist's epochs over which its prune events are spread.
        reduction_factor / min_resource: successive halving of the screening trials (epochs).
    """

    epochs: float | None = option(None, kind="number>0", doc=(
        "the study's fine-tuning compute: epochs over the training split, screening and "
        "finalists (default 4 x the dense epochs)"))
    final_share: float = option(0.8, kind="fraction", doc=(
        "share of the compute for the finalists (default 0.8)"))
    finalists: int = option(1, kind="int>=0", doc=(
        "screening trials retrained at full fidelity (default 1; 0 = none)"))
    final_lr_scales: tuple[float, ...] = option((1.0,), kind="list", doc=(
        "each finalist is retrained at its screening lr times each of these (default [1]: the "
        "screening lr)"))
    final_prune_steps: int | None = option(None, kind="int>=1", doc=(
        "gradual prune events of a finalist (default: one per 4 epochs, 2 to 8)"))
    final_kd_weight: float = option(0.0, kind="number>=0", doc=(
        "distillation weight in the finalists' training (default 0 = off; at most 1)"))
    final_kd_temperature: float = option(4.0, kind="number>0", doc=(
        "distillation temperature of the finalists (default 4)"))
    prune_window: float = option(0.5, kind="fraction1", doc=(
        "share of a finalist's epochs its prune events are spread over (default 0.5)"))
    reduction_factor: int = option(3, kind="int>=1", doc=(
        "successive halving: keep 1 in this many per rung (default 3)"))
    min_resource: int | None = option(None, kind="int>=1", doc=(
        "successive halving: epochs of the first rung (default: the screening epochs / 9, at "
        "least 1)"))

    def __post_init__(self) -> None:
        if self.epochs is not None and not (isinstance(self.epochs, (int, float))
                                            and not isinstance(self.epochs, bool)
                                            and math.isfinite(self.epochs) and self.epochs > 0):
            raise SparsesearchError(f"compute epochs must be a number > 0, got epochs={self.epochs!r}")
        if not 0.0 <= self.final_share < 1.0:
            raise SparsesearchError(f"final_share must be in [0, 1), got final_share={self.final_share!r}")
        if isinstance(self.finalists, bool) or not isinstance(self.finalists, int) or self.finalists < 0:
            raise SparsesearchError(f"finalists must be an int >= 0, got finalists={self.finalists!r}")
        scales = tuple(self.final_lr_scales) if isinstance(self.final_lr_scales, (list, tuple)) else None
        if not scales or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and math.isfinite(v) and v > 0 for v in scales):
            raise SparsesearchError(
                f"final_lr_scales must be a non-empty list of numbers > 0, got {self.final_lr_scales!r}")
        object.__setattr__(self, "final_lr_scales", tuple(float(v) for v in scales))
        if self.final_prune_steps is not None and self.final_prune_steps < 1:
            raise SparsesearchError(f"final_prune_steps must be >= 1, got {self.final_prune_steps=}")
        if not 0.0 <= self.final_kd_weight <= 1.0:
            raise SparsesearchError(f"final_kd_weight must be in [0, 1], got {self.final_kd_weight=}")
        if not self.final_kd_temperature > 0:
            raise SparsesearchError(f"final_kd_temperature must be > 0, got {self.final_kd_temperature=}")
        if not 0.0 < self.prune_window <= 1.0:
            raise SparsesearchError(f"prune_window must be in (0, 1], got {self.prune_window=}")
        if self.reduction_factor < 2:
            raise SparsesearchError(f"reduction_factor must be >= 2, got {self.reduction_factor=}")
        if self.min_resource is not None and self.min_resource < 1:
            raise SparsesearchError(f"min_resource must be >= 1, got {self.min_resource=}")

    @classmethod
    def from_mapping(cls, value: "ComputeBudget | Mapping[str, Any] | float | None") -> "ComputeBudget":
        if value is None:
            return cls()
        if isinstance(value, ComputeBudget):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(epochs=value)
        if isinstance(value, Mapping):
            valid = [f.name for f in dataclasses.fields(cls)]
            for key in value:
                if key not in valid:
                    raise SparsesearchError(f"unknown compute key {key!r}{did_you_mean(key, valid)}")
            return cls(**value)
        raise SparsesearchError(f"compute must be a number of epochs or a table, got {value!r}")

    def resolve(self, dense_epochs: int) -> "ComputeBudget":
        """This budget with ``epochs`` filled in."""
        if self.epochs is not None:
            return self
        return dataclasses.replace(self, epochs=float(COMPUTE_PER_DENSE * max(dense_epochs, 1)))

    def leaving_screening(self, trial_epochs: int) -> "ComputeBudget":
        """This budget, with the finalists' share lowered where the screening it leaves could
        not complete a single trial of ``trial_epochs`` (a finalist needs a screened trial):
        the screening then gets exactly ``trial_epochs``, the finalists the rest."""
        whole = int(math.floor(self.total + 1e-9))
        if not self.final_runs or self.screen_epochs >= trial_epochs or whole <= trial_epochs:
            return self
        # final_epochs() = floor((whole - trial_epochs + 0.5) / runs): the screening keeps trial_epochs
        return dataclasses.replace(self, final_share=(whole - trial_epochs + 0.5) / self.total)

    @property
    def total(self) -> float:
        if self.epochs is None:
            raise SparsesearchError("the compute budget is not resolved yet")
        return float(self.epochs)

    @property
    def screen_epochs(self) -> int:
        """Epochs the screening may spend: what the finalists leave (whole epochs)."""
        return int(math.floor(self.total + 1e-9)) - self.final_runs * self.final_epochs()

    @property
    def final_runs(self) -> int:
        """Finalist trainings: ``finalists × len(final_lr_scales)`` (0 without finalists)."""
        return self.finalists * len(self.final_lr_scales) if self.final_share else 0

    def final_epochs(self) -> int:
        """Epochs of each finalist training (0 without finalists)."""
        if not self.finalists or not self.final_share:
            return 0
        return int(math.floor(self.total * self.final_share / self.final_runs))

    def prune_steps_for(self, epochs: int) -> int:
        if self.final_prune_steps is not None:
            return self.final_prune_steps
        return int(min(8, max(2, epochs // 4))) if epochs >= 4 else 1

    def first_rung(self, max_epochs: int) -> int:
        """Epochs of the first successive-halving rung (``min_resource``; default: the
        screening length divided by ``reduction_factor²``, at least 1)."""
        if self.min_resource is not None:
            return self.min_resource
        return max(1, round(max_epochs / self.reduction_factor**2))

    def pruner(self, max_epochs: int) -> optuna.pruners.BasePruner:
        """Successive halving over screening epochs (no pruning when a trial is one rung)."""
        first = self.first_rung(max_epochs)
        if max_epochs <= first:
            return optuna.pruners.NopPruner()
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first, reduction_factor=self.reduction_factor,
            min_early_stopping_rate=0,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["final_lr_scales"] = list(self.final_lr_scales)
        return d


def epochs_spent(trials: Sequence[FrozenTrial], phase: str | None = None) -> int:
    """Fine-tuning epochs recorded by ``trials`` (of one phase, or all)."""
    return sum(
        int(t.user_attrs.get(record.EPOCHS, 0)) for t in trials
        if phase is None or t.user_attrs.get(record.PHASE, record.SCREEN) == phase
    )


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` samples."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1))


LATENCY_TOLERANCE = 0.05  # latencies within 5 % of the fastest are equally fast (timing noise)


def recorded_latency(t: FrozenTrial) -> float:
    """The trial's recorded latency (× dense; a latency-preferring study), else infinity."""
    v = t.user_attrs.get(record.LATENCY)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.inf


def _loss(t: FrozenTrial) -> float:
    v = t.user_attrs.get(record.VAL_LOSS)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def close_to_best(trials: Sequence[FrozenTrial], val_size: int) -> list[FrozenTrial]:
    """The trials validation cannot tell from the most accurate: within one standard error of
    the highest validation accuracy (all of them at their accuracy: the most accurate only
    when ``val_size`` is 0)."""
    best = max(t.values[0] for t in trials)
    floor = best - standard_error(best, val_size) if val_size else best
    return [t for t in trials if t.values[0] >= floor]


def fastest(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Those of ``trials`` within :data:`LATENCY_TOLERANCE` of the lowest recorded latency
    (all of them when none is recorded: a study that does not prefer latency)."""
    low = min(recorded_latency(t) for t in trials)
    if not math.isfinite(low):
        return list(trials)
    return [t for t in trials if recorded_latency(t) <= low * (1 + LATENCY_TOLERANCE)]


def choose_final(trials: Sequence[FrozenTrial], val_size: int) -> FrozenTrial | None:
    """The final model among COMPLETE finalists: the highest validation accuracy; of the
    finalists within one standard error of it, in a latency-preferring study only the fastest
    (recorded latency within :data:`LATENCY_TOLERANCE` of the lowest) stay; they are compared
    on validation loss (lower wins), then on accuracy, then on trial number. ``None`` when no
    finalist completed."""
    done = [t for t in trials if t.state == TrialState.COMPLETE
            and t.user_attrs.get(record.PHASE) == record.FINAL and t.values]
    if not done:
        return None
    return min(fastest(close_to_best(done, val_size)), key=lambda t: (_loss(t), -t.values[0], t.number))


def screen_ranking(trials: Sequence[FrozenTrial], val_size: int = 0) -> list[FrozenTrial]:
    """COMPLETE screening trials, best first (validation accuracy, then loss, then number).
    In a latency-preferring study the fastest of the trials within one standard error of the
    best accuracy (``val_size`` samples; 0: those at the best accuracy; see :func:`fastest`)
    come first, in that order."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values
            and t.user_attrs.get(record.PHASE, record.SCREEN) == record.SCREEN]
    order = sorted(done, key=lambda t: (-t.values[0], _loss(t), t.number))
    if not order:
        return order
    first = fastest(close_to_best(order, val_size))  # without latencies: the top of ``order``
    taken = {t.number for t in first}
    return first + [t for t in order if t.number not in taken]
