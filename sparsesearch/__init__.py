"""sparsesearch: plugin-based AutoML sparsity search for PyTorch.

The public API is ``__all__``; every other name is private and may change.
"""

from __future__ import annotations

from sparsesearch.budget import ParamCount, count_params
from sparsesearch.compact import CompactionError, CompactResult, compact, compact_model
from sparsesearch.data import Splits, list_datasets, load_dataset
from sparsesearch.fidelity import ComputeBudget
from sparsesearch.errors import BudgetError, PluginError, SparsesearchError, StrategyError
from sparsesearch.hookspecs import hookimpl
from sparsesearch.latency import LatencySettings
from sparsesearch.layers import find_layers
from sparsesearch.macs import count_macs
from sparsesearch.masks import load_masked_state_dict, make_permanent
from sparsesearch.models import build_model, list_models
from sparsesearch.plugins import StrategyInfo, get_strategy, list_strategies
from sparsesearch.prune import prune
from sparsesearch.recipe import Recipe, Replay, RetrainSettings, apply_recipe, load_recipe, replay
from sparsesearch.search import DenseSettings, SearchResult, search
from sparsesearch.space import SearchSpace
from sparsesearch.strategy import Layer, ScoreContext, Strategy

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "CompactResult",
    "CompactionError",
    "ComputeBudget",
    "DenseSettings",
    "LatencySettings",
    "Layer",
    "ParamCount",
    "PluginError",
    "Recipe",
    "Replay",
    "RetrainSettings",
    "ScoreContext",
    "SearchResult",
    "SearchSpace",
    "Splits",
    "SparsesearchError",
    "Strategy",
    "StrategyError",
    "StrategyInfo",
    "apply_recipe",
    "build_model",
    "compact",
    "compact_model",
    "count_macs",
    "count_params",
    "find_layers",
    "get_strategy",
    "hookimpl",
    "list_datasets",
    "list_models",
    "list_strategies",
    "load_dataset",
    "load_recipe",
    "load_masked_state_dict",
    "make_permanent",
    "prune",
    "replay",
    "search",
]
