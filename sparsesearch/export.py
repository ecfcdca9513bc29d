"""Exporting a trial: the pruned model's state_dict and the recipe JSON that replays it.

A stored trial holds its recipe (user attribute ``recipe``), not its weights. Exporting
rebuilds the trial's model: the dense model exactly as the search prepared it (the dense cache
in ``runs/<study>/``, or trained again with the same seed and settings when the cache is
gone), then :func:`sparsesearch.apply_recipe`. The rebuilt model's validation accuracy is
checked against the stored value. The best trial of the last ``sparsesearch run`` is taken
straight from ``runs/<study>/best.pt`` when that file belongs to it.

Every trial is also written in forms that load without the model's Python class: a
``torch.export`` program (``<model>.pt2``; ``torch.export.load(path).module()(x)``) and, where
the installed torch can write it (the ``onnx`` extra: ``onnx``), ONNX (``<model>.onnx``).
Structured trials (granularity ``"channel"``) are written COMPACTED (pruned channels removed);
unstructured trials as the masked model (pruned weights are zeros). The example input is two samples of the study's
validation data; the batch dimension is dynamic (``torch.export.Dim``), so the programs take
any batch size.

Model files: ``.safetensors`` (needs the ``safetensors`` package) or ``.pt`` / ``.pth``
(``torch.save`` of the state_dict; load with ``torch.load(path, weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from sparsesearch import record
from sparsesearch.budget import count_params
from sparsesearch.compact import compact
from sparsesearch.config import StudyConfig
from sparsesearch.data import list_datasets
from sparsesearch.errors import SparsesearchError
from sparsesearch.masks import make_permanent
from sparsesearch.models import list_models, read_state_file
from sparsesearch.recipe import Recipe, apply_recipe
from sparsesearch.search import best_trial, prepare_dense_model
from sparsesearch.storage import run_folder
from sparsesearch.train import evaluate, resolve_device

__all__ = [
    "ExportResult",
    "config_from_study",
    "export_trial",
    "has_safetensors",
    "example_batch",
    "write_programs",
    "output_paths",
    "save_state_dict",
    "write_export",
]

log = logging.getLogger(__name__)

CONFIG_ATTR = "sparsesearch_config"
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth")
# names that read as files of another kind: refused rather than made into a folder
_FILE_SUFFIXES = frozenset({".txt", ".pt2", ".onnx", ".bin", ".pkl", ".pickle", ".ckpt", ".h5",
                            ".npz", ".npy", ".zip", ".tar", ".gz", ".csv", ".md", ".yaml", ".toml"})


def has_safetensors() -> bool:
    return importlib.util.find_spec("safetensors") is not None


def output_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(model file, recipe file)`` for ``--out``.

    ``model.safetensors`` / ``model.pt`` / ``model.pth`` → that file and ``model.recipe.json``
    next to it; any other path is a folder receiving ``model.safetensors`` (``model.pt`` when
    safetensors is not installed) and ``recipe.json``.
    """
    p = Path(out)
    if p.suffix in MODEL_SUFFIXES:
        return p, p.with_name(p.name[: -len(p.suffix)] + ".recipe.json")
    if p.suffix == ".json":
        raise SparsesearchError(
            f"--out {out}: give the model file (.safetensors, .pt) or a folder; the recipe "
            "JSON is written next to the model"
        )
    if p.exists() and not p.is_dir():
        raise SparsesearchError(f"--out {out} exists and is not a folder or a model file")
    if p.suffix.lower() in _FILE_SUFFIXES and not p.is_dir():  # meant as a file, not a folder
        raise SparsesearchError(
            f"--out {out}: a model file ends in {', '.join(MODEL_SUFFIXES)} (the .pt2 program and "
            "ONNX are written next to it); any other name is a folder")
    name = "model.safetensors" if has_safetensors() else "model.pt"
    return p / name, p / "recipe.json"


def _check_writable(folder: Path) -> None:
    """Fail now, in one line, when ``folder`` could not be created or written: its nearest
    existing ancestor is a file, or is not writable."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise SparsesearchError(f"cannot create the folder {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise SparsesearchError(f"cannot write into {folder}: {existing} is not writable")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SparsesearchError(f"cannot write into {folder}: it exists and is not a folder") from None
    except OSError as exc:
        raise SparsesearchError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None


def _plain_state(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_state_dict(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a state_dict: safetensors for ``.safetensors``, ``torch.save`` otherwise."""
    path = Path(path)
    _make_folder(path.parent)
    state = _plain_state(model_or_state)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix == ".safetensors":
            if not has_safetensors():
                raise SparsesearchError(
                    f"cannot write {path}: the safetensors package is not installed "
                    "(pip install safetensors, or use a .pt file)"
                )
            from safetensors.torch import save_file  # safetensors is optional (extra 'safetensors')

            save_file(state, str(tmp), metadata={"format": "pt", "producer": "sparsesearch"})
        else:
            with open(tmp, "wb") as f:  # our OSError, not torch's "open file failed"
                torch.save(state, f)
        os.replace(tmp, path)
    except OSError as exc:
        raise SparsesearchError(f"cannot write {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch/safetensors writers report I/O errors this way
        raise SparsesearchError(f"cannot write {path}: {' '.join(str(exc).split())[:200]}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # safetensors is optional (extra 'safetensors')

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: one line
            raise SparsesearchError(f"cannot load {path}: {type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:200]}") from None
    return read_state_file(path, what="model file", error=SparsesearchError)


def write_export(
    model_or_state: nn.Module | Mapping[str, torch.Tensor], recipe: Recipe, out: str | os.PathLike
) -> tuple[Path, Path]:
    """Write the model and its recipe for ``--out`` (see :func:`output_paths`)."""
    model_path, recipe_path = output_paths(out)
    save_state_dict(model_or_state, model_path)
    _make_folder(recipe_path.parent)
    try:
        recipe.to_json(recipe_path)
    except OSError as exc:
        raise SparsesearchError(f"cannot write {recipe_path}: {exc.strerror or exc}") from None
    return model_path, recipe_path


# ---------------------------------------------------------------------------------------------
# rebuilding a stored trial


@dataclasses.dataclass
class ExportResult:
    model_path: Path
    recipe_path: Path
    trial: int
    params: int
    stored_val_accuracy: float
    val_accuracy: float | None  # of the rebuilt model (None: taken from best.pt unchanged)
    source: str  # "best.pt" or "rebuilt"
    program_path: Path | None = None  # torch.export program (.pt2)
    onnx_path: Path | None = None  # ONNX file (where the onnx package is installed)
    compacted_params: int | None = None  # parameters of the compacted model (structured trials)
    notes: tuple[str, ...] = ()  # one line per skipped format
    # what the study's budget is measured in ("params" or "macs"), the trial's stored count
    # in that unit and the budget; ``params`` is the trial's stored parameter count (compacted
    # for structured trials), ``nonzero`` the rebuilt (uncompacted) model's remaining parameters
    # as counted by count_params (None when copied from best.pt)
    budget_metric: str = "params"
    budget_count: int | None = None
    budget: int | None = None
    nonzero: int | None = None

    @property
    def budget_unit(self) -> str:
        return "params" if self.budget_metric == "params" else "MACs per sample"


    @property
    def matches(self) -> bool:
        return self.val_accuracy is None or math.isclose(
            self.val_accuracy, self.stored_val_accuracy, abs_tol=1e-9
        )


TRUST_HINT = ("pass --trust-study (Python: trust=True) if you trust whoever wrote this study, "
              "or give its study file")


def check_trusted(config: Any, study_name: str) -> None:
    """Refuse (one line) a configuration read from a storage whose model or dataset is not a
    name of the installed sparsesearch (built-in, zoo, registered plugin, torchvision model):
    a ``module:function`` there would be imported and called, i.e. code chosen by whoever can
    write the storage."""
    problems = []
    model, data = getattr(config, "model", None), getattr(config, "data", None)
    if not isinstance(model, str) or ":" in model or not (
        model in list_models() or (_torchvision_names_safe() and model in _torchvision_names_safe())
    ):
        problems.append(f"model {model!r}")
    if not isinstance(data, str) or ":" in data or data not in list_datasets():
        problems.append(f"dataset {data!r}")
    if problems:
        raise SparsesearchError(
            f"study {study_name!r}: the configuration stored in the storage names "
            f"{' and '.join(problems)}, not an installed built-in or plugin name; it would be "
            f"imported and run, so it is not without trust: {TRUST_HINT}"
        )


def _torchvision_names_safe() -> list[str]:
    try:
        import torchvision.models as tvm  # torchvision is slow to import

        return list(tvm.list_models(module=tvm))
    except Exception:  # noqa: BLE001
        return []


def config_from_study(study: optuna.Study, *, trust: bool = False):
    """The :class:`~sparsesearch.config.StudyConfig` a study was run with: the one
    ``sparsesearch run`` stored, else rebuilt from the search settings (named model and data).

    A storage is not a study file: without ``trust``, a stored model or dataset that is not an
    installed name (a ``module:function``, which would be imported and called) is refused
    (:func:`check_trusted`)."""
    attrs = study.user_attrs
    if isinstance(attrs.get(CONFIG_ATTR), Mapping):
        try:
            config = StudyConfig.from_dict(attrs[CONFIG_ATTR])
        except (TypeError, ValueError) as exc:
            raise SparsesearchError(
                f"study {study.study_name!r}: unreadable stored configuration "
                f"{CONFIG_ATTR!r}: {' '.join(str(exc).split())[:200]}"
            ) from None
        if not trust:
            check_trusted(config, study.study_name)
        return config
    settings = attrs.get(record.SETTINGS)
    if not isinstance(settings, Mapping):
        raise SparsesearchError(
            f"study {study.study_name!r} was not created by sparsesearch (no 'settings' attribute)"
        )
    if settings.get("data") in (None, "(datasets)"):
        raise SparsesearchError(
            f"study {study.study_name!r} was searched on in-memory datasets: export from Python "
            "with sparsesearch.apply_recipe(dense_model, recipe, data) (the recipe is the "
            "trial's 'recipe' user attribute)"
        )
    if not isinstance(settings.get("model"), str) or settings["model"] not in _model_names(settings["model"]):
        raise SparsesearchError(
            f"study {study.study_name!r} was searched on a model object ({settings.get('model')}), "
            "not a model name: give the study file, or export from Python with apply_recipe"
        )
    if not trust:
        check_trusted(SimpleNamespace(model=settings.get("model"), data=settings.get("data")),
                      study.study_name)
    metric = attrs.get(record.BUDGET_METRIC, "params")
    identity = attrs.get(record.IDENTITY) if isinstance(attrs.get(record.IDENTITY), Mapping) else {}
    budget = identity.get("budget", attrs.get(record.budget_key(metric)))
    is_number = isinstance(budget, (int, float)) and not isinstance(budget, bool)
    is_range = (isinstance(budget, (list, tuple)) and len(budget) == 2  # a pareto study's [low, high]
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in budget))
    if not (is_number or is_range):
        raise SparsesearchError(f"study {study.study_name!r} records no {record.budget_key(metric)}")
    if is_range:
        budget = list(budget)
    # the search settings a study stores are named as StudyConfig's fields
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    given = {k: v for k, v in settings.items() if k in known and v is not None}
    for key in ("include", "exclude"):  # [] was "every layer": the field's None
        given[key] = given.get(key) or None
    return StudyConfig.from_dict({
        **given, "name": study.study_name, "budget": budget, "budget_metric": metric,
        "seed": int(settings.get("seed", 0)), "dense": dict(settings.get("dense") or {}),
    })


def _model_names(name: str) -> list[str]:
    """``[name]`` when ``name`` builds a model by name (zoo, plugin, torchvision, module:fn)."""
    if ":" in name:
        return [name]
    names = list_models()
    if name in names:
        return [name]
    try:
        import torchvision.models as tvm  # torchvision is slow to import

        return [name] if name in tvm.list_models(module=tvm) else []
    except Exception:  # noqa: BLE001
        return []


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The best COMPLETE trial, or trial ``number`` (which must be COMPLETE)."""
    if number is None:
        return best_trial(study)
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        raise SparsesearchError(
            f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})"
        )
    t = match[0]
    if t.state != TrialState.COMPLETE:
        raise SparsesearchError(f"trial {number} is {t.state.name}, not COMPLETE: it has no model to export")
    if "recipe" not in t.user_attrs:
        raise SparsesearchError(f"trial {number} has no stored recipe")
    return t


def trial_recipe(study: optuna.Study, trial: FrozenTrial, **extra: Any) -> Recipe:
    recipe = Recipe.from_dict(trial.user_attrs[record.RECIPE])
    return dataclasses.replace(
        recipe,
        params=int(trial.user_attrs.get(record.PARAMS, recipe.params or 0)),
        extra={**recipe.extra, "study": study.study_name, "trial": trial.number,
               "val_accuracy": float(trial.values[0]), **extra},
    )


def _from_best_file(study: optuna.Study, trial: FrozenTrial, run_dir: Path) -> dict[str, torch.Tensor] | None:
    """``run_dir/best.pt`` when ``best.recipe.json`` says it is this study's ``trial``."""
    model_file, recipe_file = run_dir / "best.pt", run_dir / "best.recipe.json"
    if not (model_file.is_file() and recipe_file.is_file()):
        return None
    try:
        recipe = Recipe.from_json(recipe_file.read_text())
    except SparsesearchError:
        return None
    if recipe.extra.get("study") != study.study_name or recipe.extra.get("trial") != trial.number:
        return None
    stored = Recipe.from_dict(trial.user_attrs[record.RECIPE])
    same = ("strategy", "sparsity", "retrain", "seed", "strategy_params", "granularity")
    if any(getattr(recipe, f) != getattr(stored, f) for f in same):  # another study of that name
        return None
    state = read_state_file(model_file, what=f"the best model of study {study.study_name!r}",
                            error=SparsesearchError,
                            hint=f"Remove {model_file} to rebuild the trial from the dense model")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SparsesearchError(
            f"{model_file} holds no state_dict (names to tensors): it was not written by "
            f"sparsesearch run; remove it to rebuild the trial from the dense model"
        )
    return dict(state)


def dense_for(study: optuna.Study, config: Any, *, runs_dir: str | os.PathLike = "runs",
              device: Any = "cpu") -> tuple[nn.Module, Any]:
    """The study's dense model and data splits, as the search prepared them."""
    torch.manual_seed(config.seed)  # as `sparsesearch run` does before search(): same init
    return prepare_dense_model(
        config.model, config.data, seed=config.seed, dense=config.dense,
        model_kwargs=config.model_kwargs, data_options=config.data_kwargs() or None,
        checkpoint=config.checkpoint, device=str(device), runs_dir=runs_dir,
        study_name=study.study_name,
    )


def example_batch(splits: Any, n: int = 2) -> torch.Tensor:
    """``n`` real input samples (validation split) stacked into one batch."""
    ds = splits.val
    return torch.stack([torch.as_tensor(ds[i][0]) for i in range(min(n, len(ds)))]).float()


def is_structured(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(record.GRANULARITY) == "channel"


def compacted(model: nn.Module, example: torch.Tensor):
    """``compact`` of a model with permanent masks (no masks kept): a :class:`CompactResult`."""
    return compact(model.cpu().eval(), example_input=example, keep_masks=False)


def _export_program(model: nn.Module, example: torch.Tensor, notes: list[str]):
    """``torch.export`` of ``model`` with a dynamic batch dimension (any batch size from 1
    loads and runs); a model whose code fixes the batch size is exported for the example's
    batch only, with a note."""
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        try:
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        except Exception as exc:  # noqa: BLE001 - the model's code specialises the batch size
            reason = " ".join(str(exc).split())[:200]
        ep = torch.export.export(model, (example,))
    notes.append(f"torch.export program: batch size fixed to {example.shape[0]} "
                 f"(no dynamic batch dimension: {reason})")
    return ep


def write_programs(model: nn.Module, example: torch.Tensor, model_path: str | os.PathLike, *,
                   onnx: bool = True) -> tuple[Path | None, Path | None, tuple[str, ...]]:
    """Write ``model`` (no masks) as a torch.export program next to ``model_path`` (``.pt2``)
    and, with ``onnx``, as ONNX (``.onnx``). A format torch cannot write here is skipped with
    one logged line: ``(pt2 path or None, onnx path or None, notes)``."""
    model_path = Path(model_path)
    model = model.cpu().eval()
    example = example.cpu()
    notes: list[str] = []
    pt2: Path | None = model_path.with_suffix(".pt2")
    try:
        ep = _export_program(model, example, notes)
        torch.export.save(ep, pt2)
    except Exception as exc:  # noqa: BLE001 - a model torch.export cannot capture
        notes.append(f"torch.export program skipped: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        pt2 = None
    onnx_path: Path | None = None
    if onnx:
        if importlib.util.find_spec("onnx") is None:
            notes.append("ONNX export skipped: the onnx package is not installed (pip install onnx)")
        else:
            onnx_path = model_path.with_suffix(".onnx")
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    # the TorchScript exporter: the dynamo one needs onnxscript as well
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.onnx.export(model, (example,), str(onnx_path), dynamo=False,
                                      input_names=["input"], output_names=["output"],
                                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            except Exception as exc:  # noqa: BLE001 - missing exporter pieces, unsupported op
                notes.append(f"ONNX export skipped: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                onnx_path.unlink(missing_ok=True)
                onnx_path = None
    for note in notes:
        log.warning("%s", note)
    return pt2, onnx_path, tuple(notes)


def rebuild_trial(study: optuna.Study, trial: FrozenTrial, config: Any, *, runs_dir: str | os.PathLike = "runs",
                  device: str | None = None, return_splits: bool = False):
    """Replay ``trial`` from the dense model: ``(pruned model with permanent masks, val accuracy)``
    (and the data splits with ``return_splits``)."""
    torch_device = resolve_device(device or config.device)
    dense, splits = dense_for(study, config, runs_dir=runs_dir, device=torch_device)
    recipe = Recipe.from_dict(trial.user_attrs[record.RECIPE])
    model = apply_recipe(dense, recipe, splits, device=torch_device)
    model = make_permanent(model)
    val = evaluate(model, splits.val, device=torch_device)
    return (model, val, splits) if return_splits else (model, val)


def export_trial(
    study: optuna.Study,
    out: str | os.PathLike,
    *,
    trial: int | None = None,
    config: Any = None,
    runs_dir: str | os.PathLike = "runs",
    device: str | None = None,
    programs: bool = True,
    trust: bool = False,
) -> ExportResult:
    """Write trial ``trial`` (default: the best) of ``study`` as a model file and recipe JSON.

    ``config`` is the study's :class:`~sparsesearch.config.StudyConfig` (default: the one
    stored in the study). The model is rebuilt unless ``runs_dir/<study>/best.pt`` holds it.
    With ``programs`` the model is also written as a torch.export program (compacted for
    structured trials, plus ONNX where possible): see :func:`write_programs`. ``trust``: use
    a stored configuration naming ``module:function`` code (see :func:`config_from_study`).
    """
    run_dir = run_folder(runs_dir, study.study_name)  # the name may come from an untrusted storage
    _check_writable(output_paths(out)[0].parent)  # a bad --out fails before any rebuilding
    t = pick_trial(study, trial)
    stored = float(t.values[0])
    state = _from_best_file(study, t, run_dir)
    if state is not None:
        recipe = trial_recipe(study, t)
        model_path, recipe_path = write_export(state, recipe, out)
        result = _with_counts(ExportResult(model_path, recipe_path, t.number,
                                           int(t.user_attrs.get(record.PARAMS, 0)), stored, None,
                                           "best.pt"), study, t, None)
        if not programs:
            return result
        if config is None:
            config = config_from_study(study, trust=trust)
        model, splits = dense_for(study, config, runs_dir=runs_dir)
        model.load_state_dict(state)  # best.pt holds the masks made permanent: the dense keys
        return _with_programs(result, t, model, splits)
    if config is None:
        config = config_from_study(study, trust=trust)
    model, val, splits = rebuild_trial(study, t, config, runs_dir=runs_dir, device=device, return_splits=True)
    # the trial's stored count is the budgeted one (structured trials: of the compacted model);
    # the uncompacted model's non-zeros are reported apart
    params = int(t.user_attrs.get(record.PARAMS, count_params(model).remaining))
    recipe = trial_recipe(study, t, rebuilt_val_accuracy=val)
    model_path, recipe_path = write_export(model, recipe, out)
    result = _with_counts(ExportResult(model_path, recipe_path, t.number, params, stored, val,
                                       "rebuilt"), study, t, count_params(model).remaining)
    return _with_programs(result, t, model, splits) if programs else result


def _with_counts(result: ExportResult, study: optuna.Study, trial: FrozenTrial,
                 nonzero: int | None) -> ExportResult:
    metric = study.user_attrs.get(record.BUDGET_METRIC, "params")
    metric = metric if metric in ("params", "macs") else "params"
    count = trial.user_attrs.get(record.PARAMS if metric == "params" else record.MACS)
    budget = study.user_attrs.get(record.budget_key(metric))
    if isinstance(trial.params.get("budget"), (int, float)):  # a pareto study: the trial's own
        budget = trial.params["budget"]
    return dataclasses.replace(
        result, budget_metric=metric,
        budget_count=int(count) if isinstance(count, (int, float)) else None,
        budget=int(budget) if isinstance(budget, (int, float)) else None,
        nonzero=None if nonzero is None else int(nonzero))


def _with_programs(result: ExportResult, trial: FrozenTrial, model: nn.Module, splits: Any) -> ExportResult:
    example = example_batch(splits)
    model = model.cpu().eval()
    compacted_params = None
    notes: tuple[str, ...] = ()
    if is_structured(trial):
        c = compacted(model, example)
        if c.fallback:
            notes += (f"not compacted ({c.reason}): the programs hold the masked model",)
            log.warning("%s", notes[-1])
        model, compacted_params = c.model, int(c.params_after)
    pt2, onnx_path, more = write_programs(model, example, result.model_path)
    return dataclasses.replace(result, program_path=pt2, onnx_path=onnx_path,
                               compacted_params=compacted_params, notes=notes + more)
