"""One record of the study: the names of every study and trial user attribute sparsesearch
writes, in one place (documented in docs/concepts.md, "What a study records").

Study attributes (``study.user_attrs``)::

    format, identity, settings, budget_metric, budget_range, budget_params | budget_macs, total_params, total_macs,
    dense_val_accuracy, dense_test_accuracy, dense_epochs, val_size, seeds_enqueued,
    compute (the ComputeBudget as a dict), epochs_trained, finals_enqueued, final_trial,
    best_trial, test_accuracy ({trial number: accuracy}, the chosen trial only),
    latency_candidates (a latency-preferring study's timed seed allocations)

Trial attributes (``trial.user_attrs``)::

    phase ("screen" | "final"), finalist_of, lr_scale, heuristic, seed_trial, retry_of, strategy,
    granularity, sparsity,
    params, macs, recipe, epochs, val_accuracy, val_loss, pruned_at_epoch, stop_reason,
    fail_reason, traceback, surplus, latency (× the dense model's, a latency-preferring study)

Writing: a trial's attributes are written together when it ends (:func:`trial_attrs`, one
storage call); what the storage holds of a running trial is published when its training starts
(:func:`publish`); the study's set-up attributes together when it is created
(:func:`study_attrs`); ``epochs_trained`` when a run of the study ends.
"""

from __future__ import annotations

from typing import Any, Container, Mapping

from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = ["budget_key", "publish", "study_attrs", "trial_attrs", "trials_at_ask", "trials_now"]

FORMAT = "format"
IDENTITY = "identity"  # what makes the study one problem (model, data, budget, seed, space, ...)
BUDGET_RANGE = "budget_range"  # a pareto study's [low, high] per-trial budgets
STUDY_FORMAT = "sparsesearch.study/2"
SETTINGS = "settings"
BUDGET_METRIC = "budget_metric"
TOTAL_PARAMS = "total_params"
TOTAL_MACS = "total_macs"
DENSE_VAL = "dense_val_accuracy"
DENSE_TEST = "dense_test_accuracy"
DENSE_EPOCHS = "dense_epochs"
VAL_SIZE = "val_size"
SEEDS_ENQUEUED = "seeds_enqueued"
COMPUTE = "compute"
EPOCHS_TRAINED = "epochs_trained"
FINALS_ENQUEUED = "finals_enqueued"
FINAL_TRIAL = "final_trial"
BEST_TRIAL = "best_trial"
TEST_ACCURACY = "test_accuracy"
LATENCY_CANDIDATES = "latency_candidates"  # [{heuristic, temperature, latency}], fastest first

# trial attributes
PHASE = "phase"
SCREEN = "screen"
FINAL = "final"
FINALIST_OF = "finalist_of"
LR_SCALE = "lr_scale"
HEURISTIC = "heuristic"
SEED_TRIAL = "seed_trial"  # True on an enqueued heuristic seed (and on its re-queued copy)
STRATEGY = "strategy"
GRANULARITY = "granularity"
SPARSITY = "sparsity"
PARAMS = "params"
MACS = "macs"
RECIPE = "recipe"
EPOCHS = "epochs"
VAL_ACCURACY = "val_accuracy"
VAL_LOSS = "val_loss"
PRUNED_AT = "pruned_at_epoch"
STOP_REASON = "stop_reason"
FAIL_REASON = "fail_reason"
TRACEBACK = "traceback"
SURPLUS = "surplus"  # a trial PRUNED because several workers asked for the last place
LATENCY = "latency"  # the compacted model's latency over the dense model's (LatencySettings)


def budget_key(metric: str) -> str:
    """The study attribute holding the budget: ``budget_params`` or ``budget_macs``."""
    return "budget_params" if metric == "params" else "budget_macs"


def trial_attrs(trial: Any, attrs: Mapping[str, Any]) -> None:
    """Write several user attributes of a running trial in one storage call where the storage
    offers ``set_trial_user_attrs`` (sparsesearch's own RDB and journal storages: one
    transaction, one journal append), else one ``trial.set_user_attr`` per key."""
    attrs = dict(attrs)
    if not attrs:
        return
    batch = _batch(getattr(trial, "storage", None), "set_trial_user_attrs")
    cached = getattr(trial, "_cached_frozen_trial", None)  # what trial.user_attrs reads
    if batch is None or cached is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    batch(trial._trial_id, attrs)
    cached.user_attrs.update(attrs)  # as Trial.set_user_attr keeps it


def publish(trial: Any) -> None:
    """Write what the storage holds of a running trial now (its parameters, before its training
    starts: other workers' samplers and a retry of a killed worker's trial need them). Only
    storages that hold writes (:class:`~sparsesearch.write_behind.WriteBehindStorage`) do
    anything."""
    write = getattr(getattr(trial, "storage", None), "publish", None)
    if write is not None:
        write(trial._trial_id)


def study_attrs(study: Any, attrs: Mapping[str, Any]) -> None:
    """Write several user attributes of a study in one storage call where the storage offers
    ``set_study_user_attrs`` (a worker that sees one of them then sees them all), else one
    ``study.set_user_attr`` per key."""
    attrs = dict(attrs)
    if not attrs:
        return
    batch = _batch(getattr(study, "_storage", None), "set_study_user_attrs")
    if batch is None:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return
    batch(study._study_id, attrs)


def trials_at_ask(study: Any, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
    """The study's trials (not copied) as read once for the running trial: Optuna's per-trial
    snapshot, which it resets in ``study.ask`` and its own samplers share, so the sampler and
    the objective of one trial make one storage read instead of one each. Only for use while a
    trial runs (outside, the snapshot is the last trial's)."""
    return study._get_trials(deepcopy=False, states=states, use_cache=True)


def trials_now(study: Any, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
    """The study's trials (not copied) as the storage holds them now: for decisions that must
    see every other worker's trial, such as exact trial counts (a storage that answers a
    second read moments after a first from its cache reads again)."""
    expire = getattr(getattr(study, "_storage", None), "expire_reads", None)
    if expire is not None:
        expire(study._study_id)
    return study.get_trials(deepcopy=False, states=states)


def _batch(storage: Any, name: str) -> Any:
    """``storage.NAME``, also under Optuna's cache wrapper (``optuna.create_study`` wraps an RDB
    storage in ``_CachedStorage``, which passes attribute writes straight to it)."""
    found = getattr(storage, name, None)
    if found is None and isinstance(storage, _CachedStorage):
        found = getattr(getattr(storage, "_backend", None), name, None)
    return found
