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
import difflib
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
from sparsesearch.errors import SparsesearchError
from sparsesearch.fidelity import ComputeBudget
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
# the schema: section -> key -> (kind, description). Kinds are checked by _check_value.

_SPACE_NUMBER = "number or [low, high]"

SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "study": {
        "name": ("str", "study name: the Optuna study name and the folder under the runs dir "
                        "(default: the file name without .toml)"),
        "n_trials": ("int>=0", "at most this many screening trials per `run` invocation "
                               "(default: until the screening share of [compute] is spent)"),
        "timeout": ("number>0", "stop starting screening trials after this many seconds; the "
                                "finalists still train (default: none)"),
        "max_complete": ("int>=1", "stop once the study holds this many COMPLETE trials, counted "
                                   "over all invocations and workers (default: none)"),
        "seed": ("int>=0", "seed of the data split, dense training, sampler and trials (default 0)"),
        "storage": ("str", "Optuna storage URL (default sqlite:///<runs>/<name>/study.db)"),
        "objective": ("choice:accuracy,pareto", "'accuracy' (maximise validation accuracy) or "
                      "'pareto' (also minimise remaining parameters; no pruner) (default 'accuracy')"),
        "device": ("device", "'cpu', 'cuda', 'cuda:N' or 'auto' (default 'cpu')"),
    },
    "model": {
        "name": ("str", "zoo name (lenet300, lenet5, digits-mlp, digits-cnn, cifar-resnet), a "
                        "torchvision model name, or 'package.module:function' (required)"),
        "kwargs": ("table", "keyword arguments of the model factory, e.g. {depth = 20} "
                            "(num_classes defaults to the dataset's)"),
        "checkpoint": ("path", "a trained state_dict, loaded with weights_only=True; the dense "
                               "model is then not trained (default: none)"),
    },
    "data": {
        "name": ("str", "digits, mnist-5k, mnist, fashion-mnist, cifar10, a plugin dataset, "
                        "or 'package.module:function' (required)"),
        "root": ("path", "folder holding the torchvision files (never downloaded)"),
        "val_fraction": ("fraction", "validation share of the training data (built-ins' default)"),
        "test_fraction": ("fraction", "test share, for datasets without a test split"),
        "options": ("table", "other keyword arguments of the dataset loader"),
    },
    "budget": {
        "params": ("int>=1 or range", "maximum remaining parameters, counted over the whole model "
                                      "(pareto studies: [low, high], a budget per trial)"),
        "fraction": ("fraction1 or range", "share of the model's parameters to keep, in (0, 1] "
                                           "(pareto studies: [low, high])"),
        "macs": ("int>=1 or range", "instead of parameters: maximum multiply-accumulates per sample "
                                    "of the Linear/Conv layers"),
        "macs_fraction": ("fraction1 or range", "instead of parameters: share of the dense model's "
                                                "MACs to keep, in (0, 1]"),
    },
    "search": {
        "strategies": ("strlist", "strategy names searched over (default ['magnitude']; "
                                  "`sparsesearch strategies` lists them)"),
        "heuristics": ("strlist", "heuristic allocations enqueued first (default all of "
                                  "uniform, global, lamp, erk; [] for none)"),
        "pruner": ("choice:halving,median,hyperband,none", "Optuna pruner of the screening trials "
                   "of single-objective studies (default 'halving': successive halving over epochs)"),
        "include": ("strlist", "only prune these layers (module names; default all)"),
        "exclude": ("strlist", "never prune these layers (module names)"),
        "num_batches": ("int>=1", "batches of training data data-dependent strategies score on"),
    },
    "space": {
        "lr": (_SPACE_NUMBER, "fine-tuning learning rate, log scale (default [3e-4, 1e-2], for AdamW)"),
        "epochs": (_SPACE_NUMBER, "epochs of a screening trial (default: at least 3 and 64 "
                                  "optimizer steps); finalists train longer ([compute])"),
        "optimizer": ("str or list", "'adamw' (default), 'sgd' (momentum 0.9; wants an lr range "
                                     "like [0.01, 0.2]), or a list to choose from"),
        "warmup": ("fraction", "share of the optimizer steps with a linear learning-rate "
                               "warm-up (default 0.05)"),
        "weight_decay": (_SPACE_NUMBER, "fine-tuning weight decay, log scale when low > 0 (default 0)"),
        "prune_steps": (_SPACE_NUMBER, "1 = one-shot; k = k rounds of prune + retrain (default 1)"),
        "kd_weight": (_SPACE_NUMBER, "distillation weight from the dense model, 0 = off (default 0)"),
        "kd_temperature": (_SPACE_NUMBER, "distillation temperature (default 4)"),
        "allocation": ("allocation", "'family' (default: heuristic × temperature, two dimensions), "
                                     "'heuristics' (or false), or 'layers' (one density per layer)"),
        "alloc_temperature": (_SPACE_NUMBER, "temperature range of the 'family' allocation "
                                             "(default [0, 2]; 0 = uniform, 1 = the heuristic)"),
        "min_sparsity": ("number", "smallest per-layer sparsity of every allocation (default 0)"),
        "max_sparsity": ("number", "largest per-layer sparsity of every allocation (default 0.999)"),
        "batch_size": ("int>=1", "fine-tuning batch size (default 128)"),
        "heuristic_lrs": ("list", "learning rates each heuristic seed is enqueued at "
                                  "(default: one, three quarters up the lr range)"),
    },
    "compute": {
        "epochs": ("number>0", "the study's fine-tuning compute: epochs over the training split, "
                               "screening and finalists (default 4 x the dense epochs)"),
        "final_share": ("fraction", "share of the compute for the finalists (default 0.7)"),
        "finalists": ("int>=0", "screening trials retrained at full fidelity (default 1; 0 = none)"),
        "final_lr_scales": ("list", "each finalist is retrained at its screening lr times each "
                                    "of these (default [1]: the screening lr)"),
        "final_prune_steps": ("int>=1", "gradual prune events of a finalist (default: one per "
                                        "4 epochs, 2 to 8)"),
        "final_kd_weight": ("number>=0", "distillation weight in the finalists' training "
                                         "(default 0 = off; at most 1)"),
        "final_kd_temperature": ("number>0", "distillation temperature of the finalists (default 4)"),
        "prune_window": ("fraction1", "share of a finalist's epochs its prune events are spread "
                                      "over (default 0.5)"),
        "reduction_factor": ("int>=1", "successive halving: keep 1 in this many per rung (default 3)"),
        "min_resource": ("int>=1", "successive halving: epochs of the first rung (default: the "
                                   "screening epochs / 9, at least 1)"),
    },
    "strategy_params": {},  # [strategy_params.NAME]: free keys, checked in parse_study
    "dense": {
        "epochs": ("int>=0", "dense training epochs (default: at least 15 and 300 optimizer steps)"),
        "lr": ("number>0", "dense training learning rate (default 1e-3)"),
        "optimizer": ("choice:sgd,adamw", "dense training optimizer (default 'adamw')"),
        "weight_decay": ("number>=0", "dense training weight decay (default 0.01)"),
        "batch_size": ("int>=1", "dense training batch size (default 128)"),
    },
}

REQUIRED = {("model", "name"), ("data", "name")}


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return f"; did you mean {match[0]!r}?"
    return f"; valid keys: {', '.join(valid)}"


# ---------------------------------------------------------------------------------------------
# the loaded configuration


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A validated study file. Paths are absolute; ``path`` is the study file (or None)."""

    name: str
    model: str
    data: str
    budget: int | float
    budget_metric: str = "params"
    n_trials: int | None = None
    timeout: float | None = None
    max_complete: int | None = None
    seed: int = 0
    storage: str | None = None
    objective: str = "accuracy"
    device: str = "cpu"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    data_root: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    strategies: tuple[str, ...] = ("magnitude",)
    heuristics: tuple[str, ...] | None = None
    pruner: str = "halving"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    num_batches: int | None = None
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    compute: dict[str, Any] = dataclasses.field(default_factory=dict)
    strategy_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    dense: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = None

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

        ``model``, ``data`` and ``budget`` are included; ``storage`` is the resolved URL.
        """
        kw: dict[str, Any] = {
            "model": self.model,
            "data": self.data,
            "budget": self.budget,
            "budget_metric": self.budget_metric,
            "strategies": list(self.strategies),
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "storage": self.storage_url(runs_dir),
            "study_name": self.name,
            "seed": self.seed,
            "space": SearchSpace.from_mapping(self.space),
            "compute": ComputeBudget.from_mapping(self.compute),
            "strategy_params": {k: dict(v) for k, v in self.strategy_params.items()},
            "objective": self.objective,
            "device": self.device,
            "pruner": self.pruner,
            "dense": DenseSettings(**self.dense),
            "model_kwargs": dict(self.model_kwargs),
            "runs_dir": str(runs_dir),
        }
        if self.heuristics is not None:
            kw["heuristics"] = list(self.heuristics)
        if self.include is not None:
            kw["include"] = list(self.include)
        if self.exclude is not None:
            kw["exclude"] = list(self.exclude)
        if self.num_batches is not None:
            kw["num_batches"] = self.num_batches
        if self.max_complete is not None:
            kw["max_complete"] = self.max_complete
        data_kwargs = self.data_kwargs()
        if data_kwargs:
            kw["data_options"] = data_kwargs
        if self.checkpoint is not None:
            kw["checkpoint"] = self.checkpoint
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
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("strategies", "heuristics", "include", "exclude"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)


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
    if kind == _SPACE_NUMBER:
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
    study, model, data, search = values["study"], values["model"], values["data"], values["search"]
    if path is not None:
        default_name = Path(path).name.removesuffix(".toml")
    else:
        default_name = "sparsesearch"
    cfg = StudyConfig(
        name=study.get("name", default_name),
        model=model["name"],
        data=data["name"],
        budget=budget_value,
        budget_metric=budget_metric,
        n_trials=study.get("n_trials"),
        timeout=study.get("timeout"),
        max_complete=study.get("max_complete"),
        seed=study.get("seed", 0),
        storage=study.get("storage"),
        objective=study.get("objective", "accuracy"),
        device=study.get("device", "cpu"),
        model_kwargs=model.get("kwargs", {}),
        checkpoint=_resolve_path(model["checkpoint"], base) if "checkpoint" in model else None,
        data_root=_resolve_path(data["root"], base) if "root" in data else None,
        val_fraction=data.get("val_fraction"),
        test_fraction=data.get("test_fraction"),
        data_options=data.get("options", {}),
        strategies=search.get("strategies", ("magnitude",)),
        heuristics=search.get("heuristics"),
        pruner=search.get("pruner", "halving"),
        include=search.get("include"),
        exclude=search.get("exclude"),
        num_batches=search.get("num_batches"),
        space=values["space"],
        compute=values["compute"],
        strategy_params=values["strategy_params"],
        dense=values["dense"],
        path=os.path.abspath(path) if path is not None else None,
    )
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
    try:
        SearchSpace.from_mapping(cfg.space)
    except SparsesearchError as exc:
        raise ConfigError(f"{where}[space]: {exc}") from None
    try:
        ComputeBudget.from_mapping(cfg.compute)
    except SparsesearchError as exc:
        raise ConfigError(f"{where}[compute]: {exc}") from None
    try:
        DenseSettings(**cfg.dense)
    except (TypeError, ValueError) as exc:  # pragma: no cover - keys are schema-checked
        raise ConfigError(f"{where}[dense]: {exc}") from None
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
