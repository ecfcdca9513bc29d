"""Options a study file can set, described where they are defined.

:func:`option` is a dataclass field that also carries its study-file *kind* (what values it
takes, checked by :mod:`sparsesearch.config`) and a one-line description. The study-file schema
(:data:`sparsesearch.config.SCHEMA`) is read off the option classes (``SearchSpace``,
``ComputeBudget``, ``DenseSettings``, ``StudyConfig``) with :func:`described`, so an option is
added in one place: its field (and its line in ``docs/studies.md``, which a test checks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["option", "described"]

KIND = "sparsesearch.kind"
DOC = "sparsesearch.doc"
NUMBER_OR_RANGE = "number or [low, high]"  # the kind of a searchable number ([space])


def option(default: Any = dataclasses.MISSING, *, kind: str, doc: str,
           default_factory: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """A dataclass field with its study-file ``kind`` and description ``doc``; ``metadata``
    holds more (e.g. where :class:`~sparsesearch.config.StudyConfig` reads it from)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={KIND: kind, DOC: doc, **metadata})


def described(cls: Any) -> dict[str, tuple[str, str]]:
    """``{field name: (kind, description)}`` of an option class, in field order. A field that
    is not an :func:`option` is a bug (an option nobody can set or read about)."""
    out: dict[str, tuple[str, str]] = {}
    for f in dataclasses.fields(cls):
        if KIND not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not described: declare it with options.option()")
        out[f.name] = (f.metadata[KIND], f.metadata[DOC])
    return out
