"""The equivalence check: a compacted model that differs raises naming the layer group, one
that does not run falls back, and a wrong example input is a clear error."""

from __future__ import annotations

import importlib

import pytest
import torch
from compact_models import pruned_model
from torch import nn

import sparsesearch
from sparsesearch.compact import CompactionError, CompactionWarning, compact

surgery = importlib.import_module("sparsesearch.compact.surgery")  # where _param_like is used


def test_mismatch_raises_naming_the_layer_group(monkeypatch):
    model, x = pruned_model("lenet5", 0.5)
    real = surgery._param_like

    def broken(old, new):
        p = real(old, new)
        if p.dim() == 4 and p.shape[0] != p.shape[1]:  # corrupt a resized conv
            with torch.no_grad():
                p.add_(0.5)
        return p

    monkeypatch.setattr(surgery, "_param_like", broken)
    with pytest.raises(CompactionError, match=r"first at layer 'features\.0' .*layer group: features\.0"):
        compact(model, example_input=x)


def test_check_false_skips_the_equivalence_run():
    model, x = pruned_model("lenet5", 0.25)
    result = compact(model, example_input=x, check=False)
    assert result.max_diff is None and not result.fallback


def test_compacted_model_that_fails_to_run_falls_back(monkeypatch):
    model, x = pruned_model("lenet5", 0.5)
    real = surgery._param_like

    def wrong_shape(old, new):
        p = real(old, new)
        return nn.Parameter(p[:, :-1].clone()) if p.dim() == 2 else p  # Linear loses a column

    monkeypatch.setattr(surgery, "_param_like", wrong_shape)
    with pytest.warns(CompactionWarning, match="fails to run"):
        result = compact(model, example_input=x)
    assert result.fallback and result.model is model
    assert "classifier.1" in result.reason


def test_wrong_example_input_is_a_clear_error():
    model, _ = pruned_model("lenet5", 0.5)
    with pytest.raises(sparsesearch.SparsesearchError, match="fails on example_input of shape"):
        compact(model, example_input=torch.randn(1, 3, 32, 32))
