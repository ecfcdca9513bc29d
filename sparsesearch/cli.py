"""The ``sparsesearch`` command: ``strategies``, ``run``, ``report``, ``export``.

Exit status: 0 success, 2 user error (one ``sparsesearch: error: ...`` line on stderr, no
traceback), 1 a bug (traceback), 130 interrupted. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
import traceback
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Sequence

import optuna
import torch

from sparsesearch._optuna import VERBOSE_ENV
from sparsesearch.config import load_study_config, validate
from sparsesearch.errors import SparsesearchError
from sparsesearch.export import CONFIG_ATTR, export_trial, save_state_dict, trial_recipe
from sparsesearch.plugins import list_strategies
from sparsesearch.progress import Progress, ProgressLogHandler, format_duration
from sparsesearch.report import open_study, write_report
from sparsesearch.search import search
from sparsesearch.storage import (
    describe_storage_error, is_storage_error, make_storage, mask_url, resolve_storage_spec,
    run_folder, url_secrets,
)
from sparsesearch.train import resolve_device
from sparsesearch.interrupts import Terminated, handling_interrupts
from sparsesearch.workers import resume_hint, run_workers

__all__ = ["main", "build_parser"]

log = logging.getLogger("sparsesearch")

EPILOG = """\
exit status: 0 success, 2 user error (one line on stderr), 1 internal error (a bug).
docs: docs/cli.md (commands), docs/studies.md (study files)."""


def _version() -> str:
    try:
        return version("sparsesearch")
    except Exception:  # noqa: BLE001
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsesearch",
        description="Search per-layer sparsity and retraining of a PyTorch model under a hard "
                    "parameter budget, with Optuna.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="count", default=0,
                      help="more log lines on stderr (sparsesearch's debug lines, Optuna's "
                           "info lines); -vv adds Optuna's debug lines")
    loud.add_argument("-q", "--quiet", dest="global_quiet", action="store_true",
                      help="warnings and errors only on stderr (no progress display); the "
                           "results on stdout stay")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print its full traceback (file and line) before the "
                             "error line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("strategies", help="list the installed pruning strategies",
                       description="One line per strategy: name, granularity (weight/channel), "
                                   "whether it needs data, and the distribution providing it.")
    p.set_defaults(func=cmd_strategies)

    def target_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("study", nargs="?", metavar="STUDY.toml",
                       help="study file (default: the packaged studies/default.toml)")
        p.add_argument("--storage", metavar="URL",
                       help="Optuna storage URL or journal:PATH (default: the study file's, "
                            "else sqlite:///RUNS/NAME/study.db, or RUNS/NAME/journal.log when "
                            "only that exists)")
        p.add_argument("--study-name", metavar="NAME", help="study name (default: the study file's)")
        p.add_argument("--runs-dir", metavar="DIR", default="runs",
                       help="folder of the run outputs, relative to the current directory (default: runs)")

    def trust_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trust-study", action="store_true",
                       help="with --storage alone: use the configuration stored in the study even "
                            "when its model or dataset is a 'module:function' (that code is "
                            "imported and run; only for studies you trust). Giving the study "
                            "file counts as trust")

    p = sub.add_parser(
        "run", help="run or resume a study",
        description="Run a study, or resume it when the storage already holds one of that name "
                    "(trials are added). Writes RUNS/NAME/: study.db (default storage), the "
                    "dense-model cache, report.md, plots/, best.pt, best.recipe.json.",
        epilog="A bare study name (e.g. digits-mlp) not found as a file is looked up among the "
               "packaged studies.",
    )
    target_args(p)
    p.add_argument("--n-trials", type=int, metavar="N", help="trials to add in this invocation")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    p.add_argument("--seed", type=int, metavar="N", help="seed of data split, dense model, sampler")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display, warnings only")
    p.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local worker processes sharing the study, torch threads split between "
                        "them (default 1; the default storage is then RUNS/NAME/journal.log)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report", help="write a Markdown report with PNG plots of a stored study",
        description="Read a stored study (from its study file or --storage/--study-name) and "
                    "write report.md and plots/*.png. Nothing is re-evaluated.",
    )
    target_args(p)
    trust_arg(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUNS/NAME)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export", help="write a trial's pruned model (state_dict) and its recipe JSON",
        description="Write the pruned model of the best trial (or --trial N) and its recipe. "
                    "The model is rebuilt from the dense model (cached in RUNS/NAME/, or trained "
                    "again) unless RUNS/NAME/best.pt already holds it.",
    )
    target_args(p)
    trust_arg(p)
    p.add_argument("--trial", type=int, metavar="N", help="trial number (default: the best)")
    p.add_argument("--out", metavar="PATH", required=True,
                   help="model file (.safetensors, .pt, .pth; the recipe goes to "
                        "<name>.recipe.json next to it) or a folder (model.safetensors or "
                        "model.pt, and recipe.json)")
    p.add_argument("--device", metavar="DEV", help="device for rebuilding (default: the study's)")
    p.set_defaults(func=cmd_export)
    return parser


# ---------------------------------------------------------------------------------------------
# logging and output


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if _SECRETS or "://" in msg:
            msg = scrub(msg)
        if record.levelno >= logging.WARNING:
            return f"sparsesearch: warning: {msg}"
        return f"sparsesearch: {msg}"


class _DropOptunaTrialFailures(logging.Filter):
    """sparsesearch logs a failed trial in one line; Optuna's traceback copy is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Trial ") and " failed" in msg)


_VERBOSITY = [0]  # of this invocation: -1 with -q, 0, 1 with -v, 2 with -vv


def _setup_logging(quiet: bool, progress: Any = None) -> logging.Handler:
    """``quiet``: the command's own default (warnings only). -q makes every command quiet,
    -v makes every command log its info and debug lines."""
    handler = ProgressLogHandler(progress)
    handler.setFormatter(_Formatter())
    handler.addFilter(_DropOptunaTrialFailures())
    log.handlers[:] = [handler]
    verbosity = _VERBOSITY[0]
    if verbosity > 0:
        log.setLevel(logging.DEBUG)
    else:
        log.setLevel(logging.WARNING if quiet or verbosity < 0 else logging.INFO)
    log.propagate = False
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.disable_default_handler()
    optuna_logger = logging.getLogger("optuna")
    optuna_logger.handlers[:] = [handler]
    optuna_logger.setLevel({1: logging.INFO, 2: logging.DEBUG}.get(min(verbosity, 2), logging.WARNING))
    optuna_logger.propagate = False
    return handler


_CURRENT_STORAGE: list[Any] = [None]  # the storage the command works on, for error lines
_URL = re.compile(r"\b[A-Za-z][\w+.-]*://\S+")
_SECRETS: set[str] = set()  # passwords of the storage URLs this invocation was given


def _remember_secrets(*urls: Any) -> None:
    """Passwords of ``urls`` are scrubbed from every line this command prints."""
    for url in urls:
        _SECRETS.update(url_secrets(url))


def scrub(text: str) -> str:
    """``text`` on one line, with the password of any ``scheme://user:password@`` URL masked
    (and any password of a storage URL given to this command, wherever it appears)."""
    out = _URL.sub(lambda m: mask_url(m.group(0)), " ".join(str(text).split()))
    for secret in sorted(_SECRETS, key=len, reverse=True):
        out = out.replace(secret, "***")
    return out


_CPP_EXTENSION_LOG = "torch.utils.cpp_extension"


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Undo :func:`_setup_logging` on exit (handlers, levels, propagation)."""
    saved = []
    for name in ("sparsesearch", "optuna", _CPP_EXTENSION_LOG):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.level, logger.propagate))
    cpp = logging.getLogger(_CPP_EXTENSION_LOG)
    if _VERBOSITY[0] <= 0 and cpp.level == logging.NOTSET:
        # torch.utils.benchmark (report latency) imports cpp_extension, which warns "No CUDA
        # runtime is found" on every CPU machine with a CUDA_HOME: noise for our commands
        cpp.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def _err(msg: str) -> None:
    print(f"sparsesearch: error: {scrub(msg)}", file=sys.stderr)


def _check_storage(url: str) -> None:
    """Connect (and create the schema) before any training, so a bad URL fails fast."""
    try:  # retries an unreachable server (one warning line each), then one error line
        make_storage(url, study_name="-", heartbeat_interval=None)
    except SparsesearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver missing, unreachable server, bad URL
        first = scrub(str(exc))[:300]
        raise SparsesearchError(
            f"cannot open storage {mask_url(url)}: {type(exc).__name__}: {first}"
        ) from None


# ---------------------------------------------------------------------------------------------
# resolving the study a command works on


def _load_config(args: argparse.Namespace):
    cfg = load_study_config(args.study)
    changes: dict[str, Any] = {"name": args.study_name, "storage": args.storage}
    for key in ("n_trials", "timeout", "seed", "device"):
        if getattr(args, key, None) is not None:
            changes[key] = getattr(args, key)
    cfg = cfg.replace(**changes)
    validate(cfg, where="")
    return cfg


def _target(args: argparse.Namespace) -> tuple[Any, str, str]:
    """``(config or None, storage URL, study name)`` for report/export."""
    if args.study is None and args.storage is not None:
        if args.study_name is None:
            study = open_study(args.storage, None)  # one study in the storage: take it
            return None, args.storage, study.study_name
        return None, args.storage, args.study_name
    cfg = _load_config(args)
    return cfg, cfg.storage_url(args.runs_dir), cfg.name


# ---------------------------------------------------------------------------------------------
# commands


def cmd_strategies(args: argparse.Namespace) -> int:
    rows = [
        (s.name, s.granularity, "needs data" if s.requires_data else "data-free", s.distribution)
        for s in list_strategies()
    ]
    if not rows:
        _err("no strategies installed")
        return 2
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    _remember_secrets(cfg.storage)
    args.quiet = args.quiet or getattr(args, "global_quiet", False)  # `-q run` = `run --quiet`
    handler = _setup_logging(args.quiet)
    runs_dir = Path(args.runs_dir)
    run_dir = run_folder(runs_dir, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = cfg.search_kwargs(runs_dir)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise SparsesearchError(f"--workers must be >= 1, got {workers}")
    if not cfg.storage:  # the run folder's default: a journal file for several workers
        kwargs["storage"] = resolve_storage_spec(None, study_name=cfg.name, runs_dir=runs_dir,
                                                 workers=workers)
    storage = kwargs["storage"]
    _CURRENT_STORAGE[0] = storage
    _check_storage(storage)
    epochs = kwargs["compute"].epochs
    limits = [f"{epochs:g} fine-tuning epochs" if epochs else "4 x the dense epochs of fine-tuning"]
    if cfg.n_trials is not None:
        limits.append(f"at most {cfg.n_trials} screening trials")
    if cfg.timeout is not None:
        limits.append(f"at most {format_duration(cfg.timeout)}")
    if cfg.max_complete is not None:
        limits.append(f"until {cfg.max_complete} complete")
    # shown with the first trial, so errors before it (data, model, budget) stay one line
    unit = "" if cfg.budget_metric != "macs" else " MACs" if isinstance(cfg.budget, int) else " of the MACs"
    header = (f"sparsesearch: study {cfg.name!r} in {mask_url(storage)}: "
              f"{' / '.join(limits)} ({cfg.model} on {cfg.data}, budget {cfg.budget}{unit})")
    progress = None if args.quiet else Progress(cfg.n_trials, timeout=cfg.timeout, header=header)
    handler.progress = progress
    handler.epoch_lines = _VERBOSITY[0] > 0  # fit's per-epoch records as log lines with -v
    # on a terminal the display shows every epoch of training (fit's DEBUG records)
    train_log = logging.getLogger("sparsesearch.train")
    if progress is not None and progress.tty:
        train_log.setLevel(logging.DEBUG)
    recorded: list[bool] = []

    def record_config(study: Any, trial: Any) -> None:
        if not recorded:
            study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
            recorded.append(True)

    callbacks: list[Any] = [record_config]
    if progress is not None:
        callbacks.append(progress)
    torch.manual_seed(cfg.seed)  # the model's initial weights (and so the dense cache key)
    started = time.monotonic()
    try:
        # SIGTERM like Ctrl-C (the trial FAILs with a reason); neither lands inside a storage write
        with handling_interrupts():
            if workers > 1:
                result = run_workers(workers, search_kwargs=dict(kwargs, callbacks=callbacks))
            else:
                result = search(**kwargs, callbacks=callbacks)
    except KeyboardInterrupt as exc:  # the running trial is marked FAIL; say how to resume
        if progress is not None:
            progress.close()
        print("\nsparsesearch: " + scrub(resume_hint(cfg.name, args.storage,
                                                     study_file=args.study or cfg.path,
                                                     workers=workers, runs_dir=args.runs_dir,
                                                     options=_resume_options(args))),
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if progress is not None:
            progress.close()
        handler.progress = None
        train_log.setLevel(logging.NOTSET)
    elapsed = time.monotonic() - started
    study = result.study
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    recipe = trial_recipe(study, result.best_trial)
    save_state_dict(result.model, run_dir / "best.pt")
    recipe.to_json(run_dir / "best.recipe.json")
    trials = study.get_trials(deepcopy=False)
    waiting = sum(1 for t in trials if t.state.name in ("WAITING", "RUNNING"))
    more = f" (+{waiting} waiting or running)" if waiting else ""
    print(f"study {cfg.name!r}: {len(trials) - waiting} trials{more} in {mask_url(storage)} "
          f"({format_duration(elapsed)} this run)")
    print(result.summary())
    print(f"wrote {run_dir / 'best.pt'} and {run_dir / 'best.recipe.json'}")
    if not args.no_report:
        report = write_report(study, run_dir, storage=storage, runs_dir=args.runs_dir, config=cfg,
                              best_model=result.model)
        print(f"wrote {report} and {run_dir / 'plots'}/*.png")
    return 0


def _resume_options(args: argparse.Namespace) -> list[str]:
    """The ``run`` options of this invocation that a resumed run repeats (not --n-trials,
    --timeout: they count per invocation)."""
    opts: list[str] = []
    if args.seed is not None:
        opts += ["--seed", str(args.seed)]
    if args.device is not None:
        opts += ["--device", args.device]
    if args.quiet:
        opts.append("--quiet")
    if args.no_report:
        opts.append("--no-report")
    return opts


def cmd_report(args: argparse.Namespace) -> int:
    _setup_logging(True)
    _cfg, storage, name = _target(args)
    _CURRENT_STORAGE[0] = storage
    study = open_study(storage, name)
    run_dir = run_folder(args.runs_dir, study.study_name)  # the name comes from the storage
    out = Path(args.out) if args.out else run_dir
    report = write_report(study, out, storage=storage, runs_dir=args.runs_dir, config=_cfg,
                          trust=args.trust_study or _cfg is not None)
    print(f"wrote {report} and {out / 'plots'}/*.png")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _setup_logging(False)
    cfg, storage, name = _target(args)
    _CURRENT_STORAGE[0] = storage
    study = open_study(storage, name)
    if args.device is not None:
        resolve_device(args.device)
    result = export_trial(study, args.out, trial=args.trial, config=cfg,
                          runs_dir=args.runs_dir, device=args.device,
                          trust=args.trust_study or cfg is not None)
    how = "from best.pt" if result.source == "best.pt" else "rebuilt from the dense model"
    print(f"trial #{result.trial} ({how}): {_counts(result)}, stored val accuracy "
          f"{result.stored_val_accuracy:.4f}"
          + ("" if result.val_accuracy is None else f", rebuilt {result.val_accuracy:.4f}"))
    if not result.matches:
        log.warning("the rebuilt model's validation accuracy %.4f differs from the stored %.4f "
                    "(the dense model was trained again, or training is not deterministic here)",
                    result.val_accuracy, result.stored_val_accuracy)
    print(f"wrote {result.model_path} and {result.recipe_path}")
    for path in (result.program_path, result.onnx_path):
        if path is not None:
            what = "compacted, " if result.compacted_params is not None else ""
            print(f"wrote {path} ({what}loads without the model class)")
    return 0


def _counts(result: Any) -> str:
    """The trial's size in the unit its study's budget is measured in, then the rest:
    ``752 params (budget 800 params), 4,504 non-zero in the uncompacted state_dict``."""
    unit = result.budget_unit
    count = result.budget_count if result.budget_count is not None else result.params
    parts = [f"{count:,} {unit}" + (f" (budget {result.budget:,} {unit})" if result.budget else
                                    " (the unit of the budget)")]
    if result.budget_metric != "params":
        parts.append(f"{result.params:,} params")
    if result.nonzero is not None and result.nonzero != result.params:
        parts.append(f"{result.nonzero:,} non-zero in the uncompacted state_dict")
    return ", ".join(parts)


@contextlib.contextmanager
def _import_paths(args: argparse.Namespace) -> Iterator[None]:
    """The study file's folder, then the current directory, first on ``sys.path`` while the
    command runs, so a ``module:function`` model or dataset next to the study file (or in the
    working directory) imports under the console script as under ``python -m sparsesearch``
    (like pytest's rootdir handling). Entries already there are left; the added ones go."""
    folders = []
    study = getattr(args, "study", None)
    if study is not None and Path(study).is_file():
        folders.append(str(Path(study).resolve().parent))
    folders.append(os.getcwd())
    added = []
    for folder in reversed(folders):
        if folder not in sys.path and not (folder == os.getcwd() and "" in sys.path):
            sys.path.insert(0, folder)
            added.append(folder)
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _print_traceback(exc: BaseException) -> None:
    """``--debug``: the full traceback of ``exc`` on stderr, with the exceptions it was raised
    from or while handling even where sparsesearch hid them (``raise ... from None``) to keep
    its error line short, so the file and line of the user's code that raised show."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__suppress_context__ = False
        e = e.__cause__ or e.__context__
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


@contextlib.contextmanager
def _optuna_verbose(on: bool) -> Iterator[None]:
    """-v: Optuna's own info lines too (``SPARSESEARCH_OPTUNA_VERBOSE=1`` while the command
    runs, so sparsesearch does not lower Optuna's verbosity; worker processes inherit it)."""
    if not on:
        yield
        return
    previous = os.environ.get(VERBOSE_ENV)
    os.environ[VERBOSE_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = previous


def _user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (exit 2, one line): sparsesearch's own checks
    (:class:`SparsesearchError` and its subclasses) and an ``OSError`` about a file (a path the
    user gave: missing, unreadable, not writable). Anything else is a bug, shown with its
    traceback (a ``ValueError`` raised deep in the code is no message for the user)."""
    return isinstance(exc, SparsesearchError) or (isinstance(exc, OSError) and bool(exc.filename))


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsesearch`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints and exits 2
    _remember_secrets(getattr(args, "storage", None))
    _VERBOSITY[0] = -1 if getattr(args, "global_quiet", False) else getattr(args, "verbose", 0)
    debug = getattr(args, "debug", False)
    with (warnings.catch_warnings(), _logging_restored(), _import_paths(args),  # may run in-process
          _optuna_verbose(_VERBOSITY[0] > 0)):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("\nsparsesearch: interrupted; the study keeps its finished trials (run again to resume)",
                  file=sys.stderr)
            return 130
        except BrokenPipeError:
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            except OSError:
                pass
            return 0
        except Exception as exc:  # noqa: BLE001 - sorted: the user's mistake (2) or a bug (1)
            if _user_error(exc):
                if debug:
                    stored = getattr(exc, "trial_traceback", None)
                    if stored:  # the failure happened inside a trial: its own traceback
                        print(f"the traceback stored with trial #{exc.trial}:\n{stored.rstrip()}\n",
                              file=sys.stderr)
                    _print_traceback(exc)
                msg = str(exc) or type(exc).__name__
                if isinstance(exc, OSError) and str(exc.filename) not in msg:
                    msg = f"{msg}: {exc.filename}"
                if not debug and not isinstance(exc, SparsesearchError):  # a file the user named
                    msg = f"{msg} (sparsesearch --debug {args.command} ... shows where)"
                _err(msg)
                return 2
            if is_storage_error(exc):  # a read-only, full or lost database: not a bug
                if debug:
                    _print_traceback(exc)
                _err(describe_storage_error(exc, _CURRENT_STORAGE[0]))
                return 2
            traceback.print_exc()
            print("sparsesearch: internal error (a bug, please report it with the traceback above)",
                  file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
