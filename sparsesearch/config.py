"""Study files: a TOML schema for one sparsity search, validated before any work.

A study file has the sections ``[study]``, ``[model]``, ``[data]``, ``[budget]``, ``[search]``,
``[space]``, ``[compute]`` and ``[dense]`` (see ``docs/studies.md``, which documents every key in
:data:`SCHEMA`). Unknown keys at any level are refused naming the closest valid key; malformed
TOML is refused with its line and column. Relative paths (``data.root``, ``model.checkpoint``)
are relative to the study file's folder, taken lexically (symbolic links are not resolved).

``load_study_config(path)`` returns a :class:`StudyConfig`; ``config.search_kwargs()`` are the
keyword arguments of :func:`sparsesearch.search`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
from pathlib import Path
from typing import Any, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from sparsesearch.budget import HEURISTICS
from sparsesearch.errors import SparsesearchError, did_you_mean
from sparsesearch.fidelity import ComputeBudget
from sparsesearch.latency import LatencySettings
from sparsesearch.options import DOC, KIND, NUMBER_OR_RANGE, described, option
from sparsesearch.search import DenseSettings
from sparsesearch.space import SearchSpace
from sparsesearch.storage import check_study_name, mask_url, resolve_storage_spec

__all__ = [
    "ConfigError",
    "SCHEMA",
    "StudyConfig",
    "default_study_path",
    "load_study_config",
    "packaged_studies",
]

DEFAULT_STUDY = "default.toml"


class ConfigError(SparsesearchError):
    """A study file that cannot be read or does not fit the schema."""


# ---------------------------------------------------------------------------------------------
# the schema, read off the option classes: section -> key -> (kind, description). Kinds are
# checked by _check_value. StudyConfig's fields say where in the study file each one is read
# (section, key) and which keyword of search() it becomes; [space], [compute] and [dense] are
# the fields of SearchSpace, ComputeBudget and DenseSettings (sparsesearch.options).


SECTION = "sparsesearch.section"  # the study-file section a StudyConfig field is read from
KEY = "sparsesearch.key"  # ... and its key there (absent: the whole section is the field)
TABLE = "sparsesearch.table"  # a whole section: an option class, or {key: (kind, doc)}
KWARG = "sparsesearch.kwarg"  # the keyword argument of search() the field becomes
BUILD = "sparsesearch.build"  # how the field's value becomes that argument (default: as is)

# [budget]: exactly one of these keys, which also gives the budget metric
_BUDGET_KEYS: dict[str, tuple[str, str]] = {
    "params": ("int>=1 or range", "maximum remaining parameters, counted over the whole model "
                                  "(pareto studies: [low, high], a budget per trial)"),
    "fraction": ("fraction1 or range", "share of the model's parameters to keep, in (0, 1] "
                                       "(pareto studies: [low, high])"),
    "macs": ("int>=1 or range", "instead of parameters: maximum multiply-accumulates per sample "
                                "of the Linear/Conv layers"),
    "macs_fraction": ("fraction1 or range", "instead of parameters: share of the dense model's "
                                            "MACs to keep, in (0, 1]"),
}


def _key(section: str, key: str, kind: str, doc: str, default: Any = dataclasses.MISSING, *,
         kwarg: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A StudyConfig field read from ``[section] key`` (becoming ``search(kwarg=...)``)."""
    return option(default, kind=kind, doc=doc, default_factory=default_factory,
                  **{SECTION: section, KEY: key, KWARG: kwarg})


def _table(section: str, table: Any, *, build: Any = None, kwarg: str | None = None) -> Any:
    """A StudyConfig field holding a whole section (its keys are ``table``'s)."""
    return option(default_factory=dict, kind="table", doc=f"[{section}]",
                  **{SECTION: section, TABLE: table, KWARG: kwarg, BUILD: build})


def _strategy_params_kwarg(value: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in value.items()}


def _dense_settings(value: Mapping[str, Any]) -> DenseSettings:
    return DenseSettings(**value)


REQUIRED = {("model", "name"), ("data", "name")}


def _closest(key: str, valid: list[str]) -> str:  # the study file's hints are a little looser
    return did_you_mean(key, valid, cutoff=0.5)


# ---------------------------------------------------------------------------------------------
# the loaded configuration


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A validated study file. Paths are absolute; ``path`` is the study file (or None).

    Each field is an :func:`~sparsesearch.options.option` naming its place in the study file
    and the keyword of :func:`sparsesearch.search` it becomes: :data:`SCHEMA`,
    :func:`parse_study` and :meth:`search_kwargs` are read off these fields."""

    name: str = _key("study", "name", "str", (
        "study name: the Optuna study name and the folder under the runs dir (default: the file "
        "name without .toml)"), kwarg="study_name")
    model: str = _key("model", "name", "str", (
        "zoo name (lenet300, lenet5, digits-mlp, digits-cnn, cifar-resnet), a torchvision model "
        "name, or 'package.module:function' (required)"), kwarg="model")
    data: str = _key("data", "name", "str", (
        "digits, mnist-5k, mnist, fashion-mnist, cifar10, a plugin dataset, or "
        "'package.module:function' (required)"), kwarg="data")
    budget: int | float = option(kind="budget", doc="[budget]", **{
        SECTION: "budget", TABLE: _BUDGET_KEYS, KWARG: "budget"})
    budget_metric: str = option("params", kind="derived", doc="from the [budget] key", **{KWARG: "budget_metric"})
    n_trials: int | None = _key("study", "n_trials", "int>=0", (
        "at most this many screening trials per `run` invocation (default: until the screening "
        "share of [compute] is spent)"), None, kwarg="n_trials")
    timeout: float | None = _key("study", "timeout", "number>0", (
        "stop starting screening trials after this many seconds; the finalists still train "
        "(default: none)"), None, kwarg="timeout")
    max_complete: int | None = _key("study", "max_complete", "int>=1", (
        "stop once the study holds this many COMPLETE trials, counted over all invocations and "
        "workers (default: none)"), None, kwarg="max_complete")
    seed: int = _key("study", "seed", "int>=0", (
        "seed of the data split, dense training, sampler and trials (default 0)"), 0, kwarg="seed")
    storage: str | None = _key("study", "storage", "str", (
        "Optuna storage URL (default sqlite:///<runs>/<name>/study.db)"), None)  # storage_url()
    objective: str = _key("study", "objective", "choice:accuracy,pareto", (
        "'accuracy' (maximise validation accuracy) or 'pareto' (also minimise remaining "
        "parameters; no pruner) (default 'accuracy')"), "accuracy", kwarg="objective")
    device: str = _key("study", "device", "device", "'cpu', 'cuda', 'cuda:N' or 'auto' (default 'cpu')",
                       "cpu", kwarg="device")
    model_kwargs: dict[str, Any] = _key("model", "kwargs", "table", (
        "keyword arguments of the model factory, e.g. {depth = 20} (num_classes defaults to the "
        "dataset's)"), default_factory=dict, kwarg="model_kwargs")
    checkpoint: str | None = _key("model", "checkpoint", "path", (
        "a trained state_dict, loaded with weights_only=True; the dense model is then not "
        "trained (default: none)"), None, kwarg="checkpoint")
    # the data loader's keyword arguments: search(data_options=data_kwargs())
    data_root: str | None = _key("data", "root", "path", (
        "folder holding the torchvision files (never downloaded)"), None)
    val_fraction: float | None = _key("data", "val_fraction", "fraction", (
        "validation share of the training data (built-ins' default)"), None)
    test_fraction: float | None = _key("data", "test_fraction", "fraction", (
        "test share, for datasets without a test split"), None)
    data_options: dict[str, Any] = _key("data", "options", "table", (
        "other keyword arguments of the dataset loader"), default_factory=dict)
    strategies: tuple[str, ...] = _key("search", "strategies", "strlist", (
        "strategy names searched over (default ['magnitude']; `sparsesearch strategies` lists "
        "them)"), ("magnitude",), kwarg="strategies")
    heuristics: tuple[str, ...] | None = _key("search", "heuristics", "strlist", (
        "heuristic allocations enqueued first (default all of uniform, global, lamp, erk; [] for "
        "none)"), None, kwarg="heuristics")
    pruner: str = _key("search", "pruner", "choice:halving,median,hyperband,none", (
        "Optuna pruner of the screening trials of single-objective studies (default 'halving': "
        "successive halving over epochs)"), "halving", kwarg="pruner")
    include: tuple[str, ...] | None = _key("search", "include", "strlist", (
        "only prune these layers (module names; default all)"), None, kwarg="include")
    exclude: tuple[str, ...] | None = _key("search", "exclude", "strlist", (
        "never prune these layers (module names)"), None, kwarg="exclude")
    num_batches: int | None = _key("search", "num_batches", "int>=1", (
        "batches of training data data-dependent strategies score on"), None, kwarg="num_batches")
    space: dict[str, Any] = _table("space", SearchSpace, build=SearchSpace.from_mapping, kwarg="space")
    compute: dict[str, Any] = _table("compute", ComputeBudget, build=ComputeBudget.from_mapping,
                                     kwarg="compute")
    # [strategy_params.NAME]: free keys, checked in parse_study
    strategy_params: dict[str, Any] = _table("strategy_params", {}, build=_strategy_params_kwarg,
                                             kwarg="strategy_params")
    dense: dict[str, Any] = _table("dense", DenseSettings, build=_dense_settings, kwarg="dense")
    latency: dict[str, Any] = _table("latency", LatencySettings, build=LatencySettings.from_mapping,
                                     kwarg="latency")
    path: str | None = option(None, kind="derived", doc="the study file")

    def replace(self, **changes: Any) -> "StudyConfig":
        """A copy with ``changes`` (None values are ignored: "not given on the command line")."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sparsesearch.data.load_dataset` besides name and seed."""
        out: dict[str, Any] = dict(self.data_options)
        if self.data_root is not None:
            out["root"] = self.data_root
        if self.val_fraction is not None:
            out["val_fraction"] = self.val_fraction
        if self.test_fraction is not None:
            out["test_fraction"] = self.test_fraction
        return out

    def storage_url(self, runs_dir: str | os.PathLike = "runs") -> str:
        """The storage: ``storage``, else the run folder's default (``sqlite:///RUNS/NAME/study.db``,
        or ``journal:RUNS/NAME/journal.log`` when only a journal exists there)."""
        return resolve_storage_spec(self.storage or None, study_name=self.name, runs_dir=runs_dir)

    def search_kwargs(self, runs_dir: str | os.PathLike = "runs") -> dict[str, Any]:
        """Keyword arguments of :func:`sparsesearch.search`: ``search(**cfg.search_kwargs())``.

        ``model``, ``data`` and ``budget`` are included; ``storage`` is the resolved URL; an
        option left unset (None) is left out, so ``search`` applies its own default.
        """
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            target = f.metadata.get(KWARG)
            value = getattr(self, f.name)
            if target is None or value is None:
                continue
            build = f.metadata.get(BUILD)
            if build is not None:
                kw[target] = build(value)
            else:
                kw[target] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        kw["storage"] = self.storage_url(runs_dir)
        kw["runs_dir"] = str(runs_dir)
        data_kwargs = self.data_kwargs()
        if data_kwargs:
            kw["data_options"] = data_kwargs
        return kw

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (stored as the study user attribute ``sparsesearch_config``).

        Never holds credentials: the storage URL's password is masked (``user:***@host``),
        since anyone who can open the study reads its attributes."""
        d = dataclasses.asdict(self)
        if d.get("storage"):
            d["storage"] = mask_url(d["storage"])
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StudyConfig":
        """The configuration :meth:`to_dict` stored (unknown keys are ignored)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        for k, v in kw.items():
            if isinstance(v, list) and fields[k].metadata.get(KIND) == "strlist":
                kw[k] = tuple(v)
        return cls(**kw)


def _schema() -> dict[str, dict[str, tuple[str, str]]]:
    schema: dict[str, dict[str, tuple[str, str]]] = {}
    for f in dataclasses.fields(StudyConfig):
        section = f.metadata.get(SECTION)
        if section is None:
            continue
        keys = schema.setdefault(section, {})
        if KEY in f.metadata:
            keys[f.metadata[KEY]] = (f.metadata[KIND], f.metadata[DOC])
        else:
            table = f.metadata[TABLE]
            keys.update(table if isinstance(table, dict) else described(table))
    return schema


SCHEMA: dict[str, dict[str, tuple[str, str]]] = _schema()
"""The study file: section -> key -> (kind, description), read off :class:`StudyConfig`."""


# ---------------------------------------------------------------------------------------------
# reading and validating


def packaged_studies() -> list[str]:
    """File names of the study files shipped inside the package."""
    folder = importlib.resources.files("sparsesearch") / "studies"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml"))


def default_study_path() -> Path:
    """The packaged ``studies/default.toml`` (a real file: the package is not zipped)."""
    res = importlib.resources.files("sparsesearch") / "studies" / DEFAULT_STUDY
    path = Path(str(res))
    if not path.is_file():  # pragma: no cover - a zipped install
        raise ConfigError(f"the packaged {DEFAULT_STUDY} is missing from the sparsesearch install")
    return path


def _packaged(name: str) -> Path | None:
    """A bare study name (``digits-mlp`` or ``digits-mlp.toml``) found among the packaged ones."""
    if os.sep in name or "/" in name:
        return None
    file = name if name.endswith(".toml") else name + ".toml"
    if file not in packaged_studies():
        return None
    return Path(str(importlib.resources.files("sparsesearch") / "studies" / file))


def _where(path: str | None) -> str:
    return f"{path}: " if path else ""


def _type_error(where: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}{key} must be {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_KIND_WORDS = {"int>=1": "an integer >= 1", "fraction1": "a number in (0, 1]"}


def _check_value(where: str, dotted: str, kind: str, value: Any) -> Any:
    """Type-check one value; return it normalised (lists of str as tuples, etc.)."""
    if kind == "str" or kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise _type_error(where, dotted, "a non-empty string", value)
        return value
    if kind == "device":
        if not isinstance(value, str) or not (
            value in ("cpu", "cuda", "auto") or (value.startswith("cuda:") and value[5:].isdigit())
        ):
            raise _type_error(where, dotted, "'cpu', 'cuda', 'cuda:N' or 'auto'", value)
        return value
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split(",")
        if value not in choices:
            raise _type_error(where, dotted, " or ".join(repr(c) for c in choices), value)
        return value
    if kind == "int>=0" or kind == "int>=1":
        low = int(kind[-1])
        if not _is_int(value) or value < low:
            raise _type_error(where, dotted, f"an integer >= {low}", value)
        return value
    if kind == "number>0":
        if not _is_number(value) or value <= 0:
            raise _type_error(where, dotted, "a number > 0", value)
        return float(value)
    if kind == "number>=0":
        if not _is_number(value) or value < 0:
            raise _type_error(where, dotted, "a number >= 0", value)
        return float(value)
    if kind == "number":
        if not _is_number(value):
            raise _type_error(where, dotted, "a number", value)
        return value
    if kind == "fraction":
        if not _is_number(value) or not 0 <= value < 1:
            raise _type_error(where, dotted, "a number in [0, 1)", value)
        return float(value)
    if kind == "fraction1":
        if not _is_number(value) or not 0 < value <= 1:
            raise _type_error(where, dotted, "a number in (0, 1]", value)
        return float(value)
    if kind == "allocation":
        if isinstance(value, bool) or value in ("family", "heuristics", "layers"):
            return value
        raise _type_error(where, dotted, "'family', 'heuristics', 'layers', true or false", value)
    if kind.endswith(" or range"):
        inner = kind.removesuffix(" or range")
        if isinstance(value, list):
            if len(value) != 2:
                raise _type_error(where, dotted, f"{_KIND_WORDS[inner]} or [low, high]", value)
            lo, hi = (_check_value(where, dotted, inner, v) for v in value)
            if not lo < hi:
                raise ConfigError(f"{where}{dotted} range needs low < high, got {value!r}")
            return [lo, hi]
        return _check_value(where, dotted, inner, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(where, dotted, "true or false", value)
        return value
    if kind == "table":
        if not isinstance(value, dict):
            raise _type_error(where, dotted, "a table", value)
        return dict(value)
    if kind == "strlist":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _type_error(where, dotted, "a list of strings", value)
        return tuple(value)
    if kind == NUMBER_OR_RANGE:
        if _is_number(value):
            return value
        if isinstance(value, list) and 1 <= len(value) <= 2 and all(_is_number(v) for v in value):
            return list(value)
        raise _type_error(where, dotted, "a number or [low, high]", value)
    if kind == "str or list":
        if isinstance(value, str) or (
            isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        ):
            return value
        raise _type_error(where, dotted, "a string or a list of strings", value)
    if kind == "list":
        if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
            raise _type_error(where, dotted, "a non-empty list of numbers", value)
        return list(value)
    raise AssertionError(f"unknown schema kind {kind!r}")  # pragma: no cover


def _strategy_params_table(where: str, table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``[strategy_params.NAME]`` tables: hyperparameter -> a number or string (fixed), or a
    list ([low, high] for numbers, choices otherwise)."""
    out: dict[str, dict[str, Any]] = {}
    for name, params in table.items():
        if not isinstance(params, dict):
            raise _type_error(where, f"strategy_params.{name}", "a table of hyperparameters", params)
        for key, value in params.items():
            ok = (isinstance(value, (str, bool)) or _is_number(value)
                  or (isinstance(value, list) and value and all(isinstance(v, (str, bool)) or _is_number(v)
                                                                for v in value)))
            if not ok:
                raise _type_error(where, f"strategy_params.{name}.{key}",
                                  "a number, a string, [low, high] or a list of choices", value)
        out[name] = dict(params)
    return out


def _resolve_path(value: str, base: Path | None) -> str:
    p = Path(os.path.expanduser(value))
    if not p.is_absolute() and base is not None:
        p = base / p
    return os.path.normpath(os.path.abspath(p))


def parse_study(doc: Mapping[str, Any], *, path: str | os.PathLike | None = None) -> StudyConfig:
    """Validate a parsed study document (the TOML's dict) into a :class:`StudyConfig`."""
    where = _where(str(path) if path is not None else None)
    sections = list(SCHEMA)
    for key, value in doc.items():
        if key not in SCHEMA:
            raise ConfigError(f"{where}unknown section {key!r}{_closest(key, sections)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key!r} must be a table ([{key}]), got {value!r}")
    values: dict[str, dict[str, Any]] = {s: {} for s in SCHEMA}
    for section, table in doc.items():
        if section == "strategy_params":
            values[section] = _strategy_params_table(where, table)
            continue
        valid = list(SCHEMA[section])
        for key, value in table.items():
            if key not in SCHEMA[section]:
                dotted_valid = [f"{section}.{k}" for k in valid]
                raise ConfigError(
                    f"{where}unknown key {section + '.' + key!r}"
                    f"{_closest(section + '.' + key, dotted_valid)}"
                )
            kind = SCHEMA[section][key][0]
            values[section][key] = _check_value(where, f"{section}.{key}", kind, value)
    for section, key in sorted(REQUIRED):
        if key not in values[section]:
            raise ConfigError(f"{where}missing required key {section}.{key} (in [{section}])")
    budget = values["budget"]
    if len(budget) != 1:
        raise ConfigError(
            f"{where}[budget] needs exactly one of params (an int), fraction (in (0, 1]), "
            f"macs (an int) or macs_fraction (in (0, 1]), "
            f"got {sorted(budget) or 'none'}"
        )
    budget_key = next(iter(budget))
    budget_value = budget[budget_key]
    budget_metric = "macs" if budget_key.startswith("macs") else "params"

    base = Path(os.path.abspath(os.path.dirname(path))) if path is not None else None
    given: dict[str, Any] = {
        "name": Path(path).name.removesuffix(".toml") if path is not None else "sparsesearch",
        "budget": budget_value, "budget_metric": budget_metric,
        "path": os.path.abspath(path) if path is not None else None,
    }
    for f in dataclasses.fields(StudyConfig):
        section = f.metadata.get(SECTION)
        if section is None or section == "budget":
            continue
        if KEY not in f.metadata:  # a whole section: [space], [compute], [dense], ...
            given[f.name] = values[section]
        elif f.metadata[KEY] in values[section]:
            value = values[section][f.metadata[KEY]]
            given[f.name] = _resolve_path(value, base) if f.metadata[KIND] == "path" else value
    cfg = StudyConfig(**given)
    validate(cfg, where=where)
    return cfg


def validate(cfg: StudyConfig, *, where: str = "") -> None:
    """Checks that need the library: the search space and dense settings construct, the
    strategies and heuristics exist. Raises :class:`ConfigError` (one line)."""
    if not cfg.strategies:
        raise ConfigError(f"{where}search.strategies is empty: name at least one strategy")
    for h in cfg.heuristics or ():
        if h not in HEURISTICS:
            raise ConfigError(
                f"{where}unknown heuristic {h!r} in search.heuristics"
                f"{_closest(h, list(HEURISTICS))}"
            )
    for name in cfg.strategy_params:
        if name not in cfg.strategies:
            raise ConfigError(
                f"{where}[strategy_params.{name}] names a strategy that is not in search.strategies"
                f"{_closest(name, list(cfg.strategies))}"
            )
    for f in dataclasses.fields(StudyConfig):  # [space], [compute], [dense] construct
        table = f.metadata.get(TABLE)
        if table is None or isinstance(table, dict):
            continue
        try:
            f.metadata[BUILD](getattr(cfg, f.name))
        except (TypeError, ValueError) as exc:  # SparsesearchError; TypeError: keys are schema-checked
            raise ConfigError(f"{where}[{f.metadata[SECTION]}]: {exc}") from None
    try:
        check_study_name(cfg.name, what="study.name")
    except SparsesearchError as exc:
        raise ConfigError(f"{where}{exc}") from None


def load_study_config(path: str | os.PathLike | None = None) -> StudyConfig:
    """Read and validate a study file (default: the packaged ``studies/default.toml``)."""
    if path is None:
        path = default_study_path()
    p = Path(path)
    if not p.is_file():
        packaged = _packaged(str(path))
        if packaged is None:
            hint = ""
            if not p.suffix and p.with_suffix(".toml").is_file():
                hint = f"; did you mean {str(p.with_suffix('.toml'))!r}?"
            raise ConfigError(f"study file not found: {path}{hint}")
        p = path = packaged
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read study file {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError(f"{path}: invalid TOML: {msg}") from None
    return parse_study(doc, path=str(path))
