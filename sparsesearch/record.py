"""One record of the study: the names of every study and trial user attribute sparsesearch
writes, in one place (documented in docs/concepts.md, "What a study records").

Study attributes (``study.user_attrs``)::

    format, identity, settings, budget_metric, budget_range, budget_params | budget_macs, total_params, total_macs,
    dense_val_accuracy, dense_test_accuracy, dense_epochs, val_size, seeds_enqueued,
    compute (the ComputeBudget as a dict), epochs_trained, finals_enqueued, final_trial,
    best_trial, test_accuracy ({trial number: accuracy}, the chosen trial only)

Trial attributes (``trial.user_attrs``)::

    phase ("screen" | "final"), finalist_of, lr_scale, heuristic, strategy, granularity, sparsity,
    params, macs, recipe, epochs, val_accuracy, val_loss, pruned_at_epoch, stop_reason,
    fail_reason, traceback, surplus
"""

from __future__ import annotations

from typing import Any

__all__ = ["budget_key", "trial_attrs"]

FORMAT = "format"
IDENTITY = "identity"
BUDGET_RANGE = "budget_range"  # a pareto study's [low, high] per-trial budgets  # what makes the study one problem (model, data, budget, seed, space, ...)
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

# trial attributes
PHASE = "phase"
SCREEN = "screen"
FINAL = "final"
FINALIST_OF = "finalist_of"
LR_SCALE = "lr_scale"
HEURISTIC = "heuristic"
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


def budget_key(metric: str) -> str:
    """The study attribute holding the budget: ``budget_params`` or ``budget_macs``."""
    return "budget_params" if metric == "params" else "budget_macs"


def trial_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Write several trial attributes (one place to batch them when storages allow)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
