"""Reports: a Markdown summary and PNG plots of a stored study.

:func:`write_report` reads only the stored study (trials, their user attributes and the study
attributes written by :func:`sparsesearch.search`), so it works from a storage URL alone, on
any machine that can reach the storage. It never evaluates a model: test accuracy appears only
where the search stored it (the best trial's, in the study attribute ``test_accuracy``).
The one exception is the opt-out CPU latency table of structured studies (``latency=True``),
which loads the dense model from the run folder's dense cache and times it and the compacted
best model.

Plots use matplotlib's object API with the Agg canvas (no display, no global backend change).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from sparsesearch import record
from sparsesearch.errors import SparsesearchError
from sparsesearch.export import (
    compacted, config_from_study, dense_for, example_batch, rebuild_trial,
)
from sparsesearch.latency import interleaved_latency
from sparsesearch.search import best_trial
from sparsesearch.storage import make_storage, mask_url, run_folder

__all__ = ["open_study", "standard_error", "write_report"]

HEURISTIC_ORDER = ("uniform", "global", "lamp", "erk")
_COLORS = {"uniform": "tab:orange", "global": "tab:green", "lamp": "tab:red", "erk": "tab:purple"}
_MARKERS = {"uniform": "s", "global": "^", "lamp": "D", "erk": "P"}


# ---------------------------------------------------------------------------------------------
# opening a stored study


def sqlite_path(url: str) -> Path | None:
    """The file of an ``sqlite:///`` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def _storage_file(url: str) -> Path | None:
    """The file an SQLite URL or a journal storage lives in (None for server databases)."""
    path = sqlite_path(url)
    if path is not None:
        return path
    if url.startswith("journal:"):
        return Path(url[len("journal:"):]).expanduser()
    if "://" not in url and url.endswith((".log", ".journal")):
        return Path(url).expanduser()
    return None


def open_elsewhere_commands(storage: str, study_name: str) -> list[str]:
    """Shell commands opening the study in ``optuna-dashboard`` and the ``optuna`` CLI (password
    masked). Neither takes ``journal:PATH``: a journal file is given as its path, which
    optuna-dashboard reads directly and the optuna CLI with ``--storage-class
    JournalFileBackend``."""
    masked = mask_url(storage)

    def q(text: str) -> str:  # always in single quotes, as shlex.quote does when needed
        return "'" + text.replace("'", "'\"'\"'") + "'"

    journal = None
    if masked.startswith("journal:"):
        journal = masked[len("journal:"):]
    elif "://" not in masked and masked.endswith((".log", ".journal")):
        journal = masked
    if journal is not None:
        return [f"optuna-dashboard {q(journal)}",
                f"optuna trials --storage {q(journal)} --storage-class JournalFileBackend "
                f"--study-name {q(study_name)}"]
    return [f"optuna-dashboard {q(masked)}",
            f"optuna trials --storage {q(masked)} --study-name {q(study_name)}"]


def open_study(storage: str, study_name: str | None) -> optuna.Study:
    """Load a stored study (SQLAlchemy URL or ``journal:PATH``); user errors (no such file, no
    such study, unreachable database) as one-line :class:`SparsesearchError` s. Never creates
    a database."""
    shown = mask_url(storage)
    path = _storage_file(storage)
    if path is not None and not path.is_file():
        raise SparsesearchError(f"no study database at {path} (storage {shown}); run the study first")
    try:
        store: Any = make_storage(storage, study_name=study_name or "-", heartbeat_interval=None)
    except ImportError:  # pragma: no cover - without the storage module: plain Optuna URLs
        store = storage
    try:
        names = optuna.study.get_all_study_names(storage=store)
    except SparsesearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad URL, driver missing, unreachable server
        first = " ".join(str(exc).split())[:300]
        raise SparsesearchError(f"cannot open storage {shown}: {type(exc).__name__}: {first}") from None
    if study_name is None:
        if len(names) == 1:
            study_name = names[0]
        else:
            listed = ", ".join(names) if names else "none"
            raise SparsesearchError(f"give --study-name; studies in {shown}: {listed}")
    if study_name not in names:
        listed = ", ".join(names) if names else "none"
        raise SparsesearchError(f"no study named {study_name!r} in {shown}; studies there: {listed}")
    return optuna.load_study(study_name=study_name, storage=store)


# ---------------------------------------------------------------------------------------------
# helpers


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` samples."""
    if n <= 0:
        return float("nan")
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / n)


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f} %"


def _int(x: Any) -> str:
    return "—" if x is None else f"{int(x):,}"


def _val(t: FrozenTrial) -> float:
    return float(t.values[0])


def _heuristic_bests(complete: Sequence[FrozenTrial]) -> dict[str, FrozenTrial]:
    """The best COMPLETE screening trial of each heuristic seed (a finalist retraining a seed
    is the search's result, not the heuristic's)."""
    out: dict[str, FrozenTrial] = {}
    for t in complete:
        h = t.user_attrs.get(record.HEURISTIC)
        if not h or t.user_attrs.get(record.PHASE) == record.FINAL:
            continue
        if h not in out or (_val(t), -t.number) > (_val(out[h]), -out[h].number):
            out[h] = t
    return {h: out[h] for h in _ordered(set(out))}


def _ordered(names: set[str]) -> list[str]:
    order = {h: i for i, h in enumerate(HEURISTIC_ORDER)}
    return sorted(names, key=lambda h: (order.get(h, 99), h))


def _best(study: optuna.Study, complete: Sequence[FrozenTrial]) -> FrozenTrial | None:
    if not complete:
        return None
    return best_trial(study)


def _test_accuracy(study_attrs: dict[str, Any], number: int) -> float | None:
    record = study_attrs.get("test_accuracy") or {}
    value = record.get(str(number), record.get(number)) if isinstance(record, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _save(fig: Any, path: Path) -> Path:
    """The figure as PNG at ``path`` and as SVG next to it (same name, ``.svg``)."""
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".svg"))
    return path


def _finish(fig: Any, ax: Any, path: Path, title: str, xlabel: str, *, legend: bool) -> Path:
    """Title, axis labels (validation accuracy on y), grid and legend; saved as PNG and SVG."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return _save(fig, path)


def plot_learning_curves(study: optuna.Study, path: Path) -> Path:
    """Validation accuracy after each fine-tuning epoch of every trial (Optuna's intermediate
    values): screening trials thin (grey where stopped early), finalists thick."""
    fig, ax = _figure()
    values: list[float] = []
    shown = set()
    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[k] for k in steps]
        values += ys
        if t.user_attrs.get(record.PHASE) == record.FINAL:
            kind, style = "finalist", dict(color="tab:red", linewidth=2.0, zorder=4)
        elif t.state == TrialState.PRUNED:
            kind, style = "stopped early", dict(color="0.7", linewidth=0.8, zorder=2)
        else:
            kind, style = "screening", dict(color="tab:blue", linewidth=0.9, alpha=0.7, zorder=3)
        ax.plot(steps, ys, marker="." if len(steps) < 4 else None,
                label=None if kind in shown else kind, **style)
        shown.add(kind)
    _ylim(ax, values, [])
    return _finish(fig, ax, path, f"Learning curves: {study.study_name}",
                   "fine-tuning epochs of the trial", legend=bool(shown))


def _importance_lines(study: optuna.Study) -> list[str]:
    """Optuna's parameter importances (fANOVA) over the COMPLETE screening trials, when there
    are enough of them to say anything."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(record.PHASE) != record.FINAL]
    if len(study.directions) > 1 or len(done) < 4:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                params=None, target=None)
    except Exception as exc:  # noqa: BLE001 - importances are a reading aid: never fail the report
        return ["## Parameter importances", "", f"Not computed: {type(exc).__name__}: {exc}", ""]
    if not imp:
        return []
    lines = ["## Parameter importances", "",
             f"fANOVA over the {len(done)} COMPLETE screening trials (seeded): the share of the "
             "variance of validation accuracy each parameter explains. Few trials make this rough.", "",
             "| parameter | importance |", "|---|---|"]
    lines += [f"| `{k}` | {v:.2f} |" for k, v in imp.items()]
    return lines + [""]


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.figure import Figure  # matplotlib is slow to import; only the plot needs it

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _ylim(ax, values: Sequence[float], keep: Sequence[float]) -> int:
    """A y range that shows the interesting top; returns how many values fall below it."""
    if not values:
        return 0
    srt = sorted(values)
    p10 = srt[int(0.1 * (len(srt) - 1))]
    low = min([p10, *keep]) if keep else p10
    top = max(values)
    margin = max((top - low) * 0.08, 0.005)
    bottom = max(low - margin, 0.0)
    ax.set_ylim(bottom, min(top + margin, 1.0 + margin))
    return sum(1 for v in values if v < bottom)


# ---------------------------------------------------------------------------------------------
# plots


def plot_history(study: optuna.Study, path: Path) -> Path:
    """Validation accuracy per trial (heuristic seeds marked, pruned trials at their last
    reported value) and the best so far."""
    trials = study.get_trials(deepcopy=False)
    fig, ax = _figure()
    searched = [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get(record.HEURISTIC)]
    seeds = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(record.HEURISTIC)]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if searched:
        ax.scatter([t.number for t in searched], [_val(t) for t in searched], s=18,
                   color="tab:blue", label="searched", zorder=3)
    for h in _ordered({t.user_attrs[record.HEURISTIC] for t in seeds}):
        pts = [t for t in seeds if t.user_attrs[record.HEURISTIC] == h]
        ax.scatter([t.number for t in pts], [_val(t) for t in pts], s=40, marker=_MARKERS.get(h, "o"),
                   color=_COLORS.get(h, "tab:gray"), label=f"seed: {h}", zorder=4)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, s=14, marker="x", color="0.6",
                   label="pruned (last epoch)", zorder=2)
    complete = sorted(searched + seeds, key=lambda t: t.number)
    if complete:
        xs, ys, best = [], [], -math.inf
        for t in complete:
            best = max(best, _val(t))
            xs.append(t.number)
            ys.append(best)
        last_number = max(t.number for t in trials)
        if last_number > xs[-1]:
            xs.append(last_number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="best so far", zorder=5)
    values = [_val(t) for t in complete] + ([v for v in last] if pruned else [])
    below = _ylim(ax, values, [_val(t) for t in seeds])
    title = f"Optimisation history: {study.study_name}"
    if below:
        title += f" ({below} trials below the axis)"
    ax.set_title(title)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return _save(fig, path)


def plot_accuracy_vs_compute(study: optuna.Study, path: Path) -> Path:
    """Validation accuracy of each trial against the fine-tuning epochs the study had spent
    when it ended (screening trials, stopped trials at their last value, finalists), with the
    best so far: where the compute went and what it bought."""
    trials = sorted((t for t in study.get_trials(deepcopy=False)
                     if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                    key=lambda t: (t.datetime_complete or t.datetime_start or datetime.datetime.min, t.number))
    fig, ax = _figure()
    spent, xs = 0, {}
    for t in trials:
        spent += int(t.user_attrs.get(record.EPOCHS, 0) or 0)
        xs[t.number] = spent
    groups = {
        "screening": [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(record.PHASE) != record.FINAL],
        "finalists": [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(record.PHASE) == record.FINAL],
        "stopped early": [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values],
    }
    style = {"screening": ("tab:blue", "o", 18), "finalists": ("tab:red", "*", 90), "stopped early": ("0.6", "x", 14)}
    values: list[float] = []
    for label, pts in groups.items():
        if not pts:
            continue
        ys = [_val(t) if t.state == TrialState.COMPLETE else t.intermediate_values[max(t.intermediate_values)]
              for t in pts]
        values += ys
        color, marker, size = style[label]
        ax.scatter([xs[t.number] for t in pts], ys, s=size, marker=marker, color=color, label=label, zorder=3)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        bx, by, best = [], [], -math.inf
        for t in done:
            best = max(best, _val(t))
            bx.append(xs[t.number])
            by.append(best)
        ax.step(bx, by, where="post", color="black", linewidth=1.2, label="best so far", zorder=4)
    compute = (study.user_attrs.get(record.COMPUTE) or {}).get("epochs")
    if compute:
        ax.axvline(float(compute), color="0.4", linestyle="--", linewidth=1, label="compute budget")
    _ylim(ax, values, [_val(t) for t in groups["finalists"]])
    return _finish(fig, ax, path, f"Accuracy vs compute spent: {study.study_name}",
                   "fine-tuning epochs spent by the study", legend=bool(values))


def _compute_lines(study: optuna.Study, trials: Sequence[FrozenTrial], best: FrozenTrial | None,
                   val_size: Any) -> list[str]:
    """How the compute budget was spent, and where the final model came from."""
    attrs = study.user_attrs
    compute = attrs.get(record.COMPUTE) or {}
    if not compute:
        return []
    screen = [t for t in trials if t.user_attrs.get(record.PHASE, record.SCREEN) != record.FINAL]
    finals = [t for t in trials if t.user_attrs.get(record.PHASE) == record.FINAL]
    ep = lambda ts: sum(int(t.user_attrs.get(record.EPOCHS, 0) or 0) for t in ts)  # noqa: E731
    stopped = [t for t in screen if t.state == TrialState.PRUNED and t.user_attrs.get(record.EPOCHS)]
    full = [t for t in screen if t.state == TrialState.COMPLETE]
    out = ["## Compute: how it was spent and where the final model came from", ""]
    total = compute.get("epochs")
    out.append(f"- Budget: {total:g} fine-tuning epochs (dense training apart: "
               f"{attrs.get('dense_epochs', '?')} epochs); spent **{ep(trials)}**.")
    out.append(f"- Screening: {ep(screen)} epochs over {len(screen)} trials: {len(full)} ran their full "
               f"{max((t.user_attrs.get(record.EPOCHS, 0) for t in full), default=0)} epochs, {len(stopped)} "
               f"were stopped early by successive halving or the budget "
               f"({ep(stopped)} epochs).")
    if finals:
        lengths = "/".join(str(n) for n in sorted({int(t.user_attrs.get(record.EPOCHS, 0) or 0) for t in finals}))
        sources = ", ".join(f"#{n}" for n in sorted({t.user_attrs.get(record.FINALIST_OF, -1) for t in finals}))
        scales = ", ".join(format(float(t.user_attrs.get(record.LR_SCALE, 1.0)), ".2g") for t in finals)
        out.append(f"- Finalists: {ep(finals)} epochs: {len(finals)} retraining{'s' if len(finals) != 1 else ''} of {sources} "
                   f"({lengths} epochs each, gradual pruning, learning-rate scales {scales}).")
    if best is not None and best.user_attrs.get(record.PHASE) == record.FINAL:
        src = best.user_attrs.get(record.FINALIST_OF)
        alloc = str(best.params.get("alloc:heuristic", best.user_attrs.get(record.HEURISTIC) or "searched allocation"))
        if "alloc:temperature" in best.params:
            alloc += f", temperature {best.params['alloc:temperature']:.2f}"
        lr = (best.user_attrs.get(record.RECIPE) or {}).get("retrain", {}).get("lr", float("nan"))
        out.append(f"- The final model is trial **#{best.number}**: screening trial #{src} ({alloc}) "
                   f"retrained at lr {lr:.3g}" + (", chosen on validation among the finalists."
                                                  if len(finals) > 1 else "."))
        done = [t for t in finals if t.state == TrialState.COMPLETE and t.values]
        if len(done) > 1 and isinstance(val_size, int) and val_size > 0:
            vals = sorted((_val(t) for t in done), reverse=True)
            se = standard_error(vals[0], val_size)
            out.append(f"- Final comparison: the finalists' validation accuracies are "
                       f"{', '.join(_pct(v) for v in vals)}; one standard error is {100 * se:.2f} "
                       f"points, within which validation loss decides (lower wins; a "
                       f"latency-preferring study keeps the fastest first, within 5 %).")
    elif best is not None:
        out.append(f"- No finalist completed: the result is the best screening trial #{best.number}.")
    out.append("")
    return out


def plot_accuracy_vs_params(study: optuna.Study, path: Path) -> Path:
    """Validation accuracy against remaining parameters for every COMPLETE trial, the
    heuristic seeds marked, the budget as a line; the Pareto front in pareto studies."""
    attrs = study.user_attrs
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = _figure()
    pts = [t for t in complete if isinstance(t.user_attrs.get(record.PARAMS), (int, float))]
    searched = [t for t in pts if not t.user_attrs.get(record.HEURISTIC)]
    seeds = [t for t in pts if t.user_attrs.get(record.HEURISTIC)]
    if searched:
        ax.scatter([t.user_attrs[record.PARAMS] for t in searched], [_val(t) for t in searched], s=18,
                   color="tab:blue", alpha=0.8, label="searched", zorder=3)
    for h in _ordered({t.user_attrs[record.HEURISTIC] for t in seeds}):
        hp = [t for t in seeds if t.user_attrs[record.HEURISTIC] == h]
        ax.scatter([t.user_attrs[record.PARAMS] for t in hp], [_val(t) for t in hp], s=44,
                   marker=_MARKERS.get(h, "o"), color=_COLORS.get(h, "tab:gray"),
                   label=f"seed: {h}", zorder=4)
    if len(study.directions) > 1:
        front = sorted(
            (t for t in study.best_trials if isinstance(t.user_attrs.get(record.PARAMS), (int, float))),
            key=lambda t: t.user_attrs[record.PARAMS],
        )
        if front:
            ax.step([t.user_attrs[record.PARAMS] for t in front], [_val(t) for t in front], where="post",
                    color="black", linewidth=1.2, label="Pareto front", zorder=5)
    if pts:
        b = best_trial(study)
        ax.scatter([b.user_attrs.get(record.PARAMS, 0)], [_val(b)], s=180, marker="*", color="gold",
                   edgecolor="black", label=f"best (#{b.number})", zorder=6)
    budget = attrs.get("budget_params")
    if isinstance(budget, (int, float)):
        ax.axvline(budget, color="tab:red", linestyle="--", linewidth=1, label=f"budget ({int(budget):,})")
    dense_val = attrs.get("dense_val_accuracy")
    if isinstance(dense_val, (int, float)):
        ax.axhline(dense_val, color="0.4", linestyle=":", linewidth=1, label=f"dense ({100 * dense_val:.2f} %)")
    params = [t.user_attrs[record.PARAMS] for t in pts]
    if params and min(params) > 0 and max(params) / max(min(params), 1) > 20:
        ax.set_xscale("log")
    values = [_val(t) for t in pts] + ([dense_val] if isinstance(dense_val, (int, float)) else [])
    below = _ylim(ax, values, [_val(t) for t in seeds])
    title = "Validation accuracy vs remaining parameters"
    if below:
        title += f" ({below} below the axis)"
    ax.set_title(title)
    ax.set_xlabel("remaining parameters (whole model)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return _save(fig, path)


def plot_layer_sparsity(best: FrozenTrial, path: Path, compare: FrozenTrial | None = None) -> Path:
    """Per-layer sparsity of the best trial (bars), with another trial's (e.g. the best
    heuristic's) as markers."""
    sparsity: dict[str, float] = dict(best.user_attrs.get(record.SPARSITY) or {})
    names = list(sparsity)
    fig, ax = _figure(7.0, max(2.5, 0.35 * len(names) + 1.5))
    ys = list(range(len(names)))
    ax.barh(ys, [100 * sparsity[n] for n in names], color="tab:blue", alpha=0.8,
            label=f"best (#{best.number})")
    if compare is not None:
        other = compare.user_attrs.get(record.SPARSITY) or {}
        cx = [(i, 100 * other[n]) for i, n in enumerate(names) if n in other]
        if cx:
            h = compare.user_attrs.get(record.HEURISTIC) or f"#{compare.number}"
            ax.scatter([x for _, x in cx], [i for i, _ in cx], marker=_MARKERS.get(h, "o"),
                       color=_COLORS.get(h, "tab:red"), zorder=3, label=f"{h} (#{compare.number})")
    ax.set_yticks(ys, labels=names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (% of the layer's weights or channels removed)")
    ax.set_title(f"Per-layer sparsity of the best trial (#{best.number})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# CPU latency of the dense and the compacted best model

LATENCY_BATCHES = (1, 64)


def _latency_section(study: optuna.Study, best: FrozenTrial, runs_dir: Any, config: Any,
                     best_model: Any, trust: bool = False) -> list[str]:
    try:
        run_dir = run_folder(runs_dir, study.study_name)
        if config is None:
            try:
                config = config_from_study(study, trust=trust)
            except SparsesearchError as exc:
                logging.getLogger("sparsesearch").warning("latency not measured: %s", exc)
                return [f"Latency not measured: {exc}"]
        if config.checkpoint is None and not any(run_dir.glob("dense-*.pt")):
            return [f"Latency not measured: no dense-model cache in {run_dir} to rebuild the models from."]
        dense, splits = dense_for(study, config, runs_dir=runs_dir)
        if best_model is None:
            best_model, _ = rebuild_trial(study, best, config, runs_dir=runs_dir, device="cpu")
        example = example_batch(splits, 1)
        result = compacted(best_model, example)
    except Exception as exc:  # noqa: BLE001 - the report never fails for the latency section
        return [f"Latency not measured: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"]
    if result.fallback:
        return [f"Latency not measured: the best model could not be compacted ({result.reason})."]
    models = {"dense": dense.cpu().eval(), "compacted": result.model.eval()}
    out = [f"`torch.utils.benchmark` (adaptive `blocked_autorange`), 5 interleaved rounds of dense "
           f"and compacted, `torch.inference_mode`, on the CPU ({torch.get_num_threads()} threads): "
           f"median and interquartile range; compacted: {result.params_after:,} of "
           f"{result.params_before:,} parameters.", "",
           "| batch | dense (ms) | compacted (ms) | speed-up |", "|---|---|---|---|"]
    for b in LATENCY_BATCHES:
        x = example.expand(b, *example.shape[1:]).contiguous()
        lat = interleaved_latency(models, x)
        d, c = lat["dense"], lat["compacted"]
        out.append(f"| batch {b} | {1000 * d[0]:.3f} ({1000 * d[1]:.3f}–{1000 * d[2]:.3f}) | "
                   f"{1000 * c[0]:.3f} ({1000 * c[1]:.3f}–{1000 * c[2]:.3f}) | "
                   f"{d[0] / max(c[0], 1e-12):.2f}× |")
    return out


# ---------------------------------------------------------------------------------------------
# the Markdown report


def _row(label: str, t: FrozenTrial | None, attrs: dict[str, Any], total: int | None,
         val_size: int | None) -> str:
    if t is None:
        return f"| {label} | — | — | — | — | — | — | — |"
    val = _val(t)
    se = standard_error(val, val_size) if val_size else None
    params = t.user_attrs.get(record.PARAMS)
    comp = f"{total / max(params, 1):.1f}×" if total and isinstance(params, (int, float)) else "—"
    retrain = (t.user_attrs.get(record.RECIPE) or {}).get("retrain") or {}
    lr = retrain.get("lr")
    return (
        f"| {label} | #{t.number} | {t.user_attrs.get(record.STRATEGY, '—')} | {_pct(val)} | "
        f"{'—' if se is None else f'±{100 * se:.2f}'} | {_pct(_test_accuracy(attrs, t.number))} | "
        f"{_int(params)} | {comp} | {'—' if lr is None else f'{lr:.3g}'} |"
    )


def write_report(
    study: optuna.Study,
    out_dir: str | os.PathLike,
    *,
    storage: str | None = None,
    title: str | None = None,
    latency: bool = True,
    runs_dir: str | os.PathLike = "runs",
    config: Any = None,
    best_model: Any = None,
    trust: bool = False,
) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/plots/*.png`` for ``study``; return the
    report's path. ``storage`` is shown (password masked) so readers can open the study.

    With ``latency`` (the default) and a structured best trial (granularity ``"channel"``),
    the CPU latency of the dense and the compacted best model is measured, when the dense
    model can be loaded from the dense cache in ``runs_dir/<study>/`` (``config``: the study's
    :class:`~sparsesearch.config.StudyConfig`, default the stored one; ``best_model``: the
    best trial's pruned model, default rebuilt from its recipe). ``trust``: a stored
    configuration naming ``module:function`` code may be used (imported and called) for
    that; without it such a configuration is refused and the latency not measured."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    attrs = dict(study.user_attrs)
    settings = attrs.get(record.SETTINGS) or {}
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    multi = len(study.directions) > 1
    total = attrs.get("total_params")
    budget = attrs.get("budget_params")
    val_size = attrs.get("val_size")
    dense_val = attrs.get("dense_val_accuracy")
    dense_test = attrs.get("dense_test_accuracy")
    best = _best(study, complete)
    heur = _heuristic_bests(complete)

    images = [("Optimisation history", plot_history(study, plots / "history.png"))]
    if any(t.intermediate_values for t in trials):
        images.append(("Learning curves (validation accuracy per epoch)",
                       plot_learning_curves(study, plots / "learning_curves.png")))
    if attrs.get(record.COMPUTE):
        images.append(("Validation accuracy vs compute spent",
                       plot_accuracy_vs_compute(study, plots / "accuracy_vs_compute.png")))
    images.append(("Validation accuracy vs remaining parameters",
                   plot_accuracy_vs_params(study, plots / "accuracy_vs_params.png")))
    best_heur = max(heur.values(), key=lambda t: (_val(t), -t.number)) if heur else None
    if best is not None and best.user_attrs.get(record.SPARSITY):
        images.append(("Per-layer sparsity of the best trial",
                       plot_layer_sparsity(best, plots / "layer_sparsity.png",
                                           compare=best_heur if best_heur is not best else None)))

    lines: list[str] = []
    add = lines.append
    add(f"# {title or 'sparsesearch report'}: {study.study_name}")
    add("")
    add(f"Generated {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} from the stored "
        "study alone (nothing was re-evaluated).")
    add("")
    if storage:
        add(f"- Storage: `{mask_url(storage)}`, study `{study.study_name}`")
    if settings:
        add(f"- Model `{settings.get('model', '?')}` on data `{settings.get('data', '?')}`, "
            f"strategies {', '.join(f'`{s}`' for s in settings.get('strategies', [])) or '?'}, "
            f"objective `{settings.get('objective', 'accuracy')}`, seed {settings.get('seed', '?')}")
    if isinstance(budget, (int, float)) and isinstance(total, (int, float)) and total:
        add(f"- Budget: at most {int(budget):,} of {int(total):,} parameters remain "
            f"({100 * budget / total:.2f} % kept, {total / max(budget, 1):.1f}× compression), counted "
            "over the whole model")
    macs = attrs.get("budget_macs")
    if isinstance(macs, (int, float)) and isinstance(attrs.get("total_macs"), (int, float)) and attrs["total_macs"]:
        tm = attrs["total_macs"]
        add(f"- Budget: at most {int(macs):,} of {int(tm):,} multiply-accumulates per sample "
            f"({100 * macs / tm:.2f} % kept, {tm / max(macs, 1):.1f}× fewer MACs)")
    add("- Trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) if trials else "- Trials: none yet")
    if isinstance(dense_val, (int, float)):
        add(f"- Dense model: validation {_pct(dense_val)}, test {_pct(dense_test)}")
    add("")

    lines.extend(_compute_lines(study, trials, best, val_size))

    add("## Best trial vs the heuristics")
    add("")
    if best is None:
        add("No COMPLETE trial yet.")
    else:
        add("Each heuristic row is its seed trial (the best, if it was enqueued at several learning "
            "rates), screened with the short one-shot regime; the best trial is the final model. "
            "Test accuracy is measured for the best trial only; nothing is selected on it.")
        add("")
        add("| | trial | strategy | val accuracy | ±SE (pts) | test accuracy | params | compression | lr |")
        add("|---|---|---|---|---|---|---|---|---|")
        if isinstance(dense_val, (int, float)):
            se = standard_error(dense_val, val_size) if val_size else None
            add(f"| dense | — | — | {_pct(dense_val)} | {'—' if se is None else f'±{100 * se:.2f}'} | "
                f"{_pct(dense_test)} | {_int(total)} | 1.0× | — |")
        label = "**best**" + (f" ({best.user_attrs[record.HEURISTIC]} seed)" if best.user_attrs.get(record.HEURISTIC) else "")
        add(_row(label, best, attrs, total, val_size))
        for h, t in heur.items():
            add(_row(h, t, attrs, total, val_size))
        add("")

    add("## How noisy is selection on validation?")
    add("")
    if isinstance(val_size, int) and val_size > 0 and best is not None:
        p = _val(best)
        se = standard_error(p, val_size)
        add(f"The validation split has **{val_size:,}** samples. At the best trial's accuracy "
            f"p = {100 * p:.2f} % the standard error is sqrt(p(1−p)/n) = **{100 * se:.2f} "
            "percentage points**.")
        if best_heur is not None:
            gap = p - _val(best_heur)
            add(f"The best trial is {100 * gap:+.2f} points from the best heuristic "
                f"({best_heur.user_attrs[record.HEURISTIC]}, #{best_heur.number}), "
                f"{gap / se if se > 0 else float('nan'):.1f} standard errors.")
        add("")
        add(f"The best of {len(complete)} trials is chosen on this split, so its validation accuracy "
            "is biased upwards (winner's curse): gaps of one or two standard errors may be noise. "
            "The test accuracy, measured once for the best trial, is the unbiased estimate.")
    else:
        add("The validation split size is not recorded in this study (it was not created by "
            "sparsesearch.search), or there is no COMPLETE trial.")
    add("")

    lines.extend(_importance_lines(study))

    add("## Plots")
    add("")
    for caption, path in images:
        add(f"### {caption}")
        add("")
        add(f"![{caption}]({path.relative_to(out).as_posix()})")
        add("")

    if multi:
        add("## Pareto front (validation accuracy, remaining parameters)")
        add("")
        add("Optuna's pruners do not work in multi-objective studies: every trial ran to the end.")
        add("")
        add("| trial | val accuracy | params | compression | heuristic |")
        add("|---|---|---|---|---|")
        for t in sorted(study.best_trials, key=lambda t: t.values[1] if len(t.values) > 1 else 0):
            params = t.user_attrs.get(record.PARAMS)
            comp = f"{total / max(params, 1):.1f}×" if total and isinstance(params, (int, float)) else "—"
            add(f"| #{t.number} | {_pct(_val(t))} | {_int(params)} | {comp} | "
                f"{t.user_attrs.get(record.HEURISTIC) or ''} |")
        add("")
        add("Export any point with `sparsesearch export ... --trial N --out PATH`.")
        add("")

    if best is not None:
        add(f"## The best trial (#{best.number})")
        add("")
        recipe = best.user_attrs.get(record.RECIPE) or {}
        retrain = recipe.get("retrain") or {}
        if retrain:
            add("Fine-tuning: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                            for k, v in retrain.items()))
            add("")
        sparsity = best.user_attrs.get(record.SPARSITY) or {}
        if sparsity:
            add("| layer | sparsity | kept |")
            add("|---|---|---|")
            for name, s in sparsity.items():
                add(f"| `{name}` | {100 * s:.2f} % | {100 * (1 - s):.2f} % |")
            add("")
        add("Replay it with `sparsesearch export` (the model and its recipe JSON) or "
            "`sparsesearch.apply_recipe(dense_model, recipe, data)`.")
        add("")

    if latency and best is not None and best.user_attrs.get(record.GRANULARITY) == "channel":
        add("## CPU latency (dense vs compacted best)")
        add("")
        lines.extend(_latency_section(study, best, runs_dir, config, best_model, trust))
        add("")

    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        add(f"## Failed trials ({len(failed)})")
        add("")
        for t in failed[:10]:
            reason = " ".join(str(t.user_attrs.get(record.FAIL_REASON, "no reason stored")).split())
            add(f"- #{t.number}: {reason[:300]}")
        if len(failed) > 10:
            add(f"- … and {len(failed) - 10} more (`optuna trials` lists them)")
        add("")

    if storage:
        add("## Open the study elsewhere")
        add("")
        add("It is a plain Optuna study:")
        add("")
        add("```sh")
        lines.extend(open_elsewhere_commands(storage, study.study_name))
        add("```")
        add("")

    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
