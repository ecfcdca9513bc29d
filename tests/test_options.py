"""Options described where they are defined: the study-file schema is read off them."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import sparsesearch
from sparsesearch.config import KWARG, SCHEMA, StudyConfig
from sparsesearch.fidelity import ComputeBudget
from sparsesearch.options import described, option
from sparsesearch.search import DenseSettings
from sparsesearch.space import SearchSpace


def test_described_gives_kind_and_description_in_field_order():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        a: int = option(1, kind="int>=1", doc="the a")
        b: tuple = option(kind="list", doc="the b", default_factory=tuple)

    assert described(Opts) == {"a": ("int>=1", "the a"), "b": ("list", "the b")}
    assert Opts() == Opts(a=1, b=())


def test_a_field_without_a_description_is_refused():
    @dataclasses.dataclass
    class Opts:
        a: int = option(1, kind="int>=1", doc="the a")
        b: int = 2

    with pytest.raises(TypeError, match=r"Opts\.b is not described"):
        described(Opts)


def test_the_study_file_sections_are_the_option_classes():
    assert SCHEMA["space"] == described(SearchSpace)
    assert SCHEMA["compute"] == described(ComputeBudget)
    assert SCHEMA["dense"] == described(DenseSettings)


def test_every_study_config_option_reaches_a_search_parameter():
    params = inspect.signature(sparsesearch.search).parameters
    targets = [f.metadata[KWARG] for f in dataclasses.fields(StudyConfig) if f.metadata.get(KWARG)]
    assert set(targets) <= set(params), set(targets) - set(params)
    assert len(targets) == len(set(targets))
