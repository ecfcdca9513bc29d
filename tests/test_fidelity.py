"""The compute budget's split between screening and finalists (sparsesearch/fidelity.py)."""

from __future__ import annotations

import pytest

from sparsesearch.fidelity import ComputeBudget


@pytest.mark.parametrize("epochs, finalists, scales", [
    (7, 1, (1.0,)), (8, 1, (1.0,)), (9, 2, (1.0,)), (11, 1, (0.5, 1.0)), (13.5, 1, (1.0,)), (4, 1, (1.0,)),
])
def test_the_screening_always_keeps_room_for_one_complete_trial(epochs, finalists, scales):
    budget = ComputeBudget(epochs=epochs, finalists=finalists, final_lr_scales=scales)
    fitted = budget.leaving_screening(3)
    whole = int(epochs)
    assert fitted.screen_epochs >= min(3, whole)
    assert fitted.screen_epochs + fitted.final_runs * fitted.final_epochs() <= whole
    if budget.screen_epochs >= 3:
        assert fitted == budget  # nothing to change: the default split stands
    else:  # the finalists give up only what the screening needs
        assert fitted.screen_epochs == 3 or whole <= 3
        assert fitted.final_epochs() >= (whole - 3) // fitted.final_runs


def test_a_budget_without_finalists_is_left_alone():
    budget = ComputeBudget(epochs=2, final_share=0.0)
    assert budget.leaving_screening(3) == budget
