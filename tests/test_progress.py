"""The progress display (sparsesearch/progress.py): a line fitted to the terminal's width with
the dense model's and the running trial's epochs on a terminal; one plain line per finished trial
otherwise. Driven with a fake terminal stream; nothing here depends on timing."""

from __future__ import annotations

import io
import logging
import re
import sys

import optuna
import pytest

from sparsesearch.cli import main
from sparsesearch.progress import BAR_MAX, BAR_MIN, Progress, ProgressLogHandler, terminal_width
from sparsesearch.train import EPOCH_RECORD, fit, train_dense

ESC = "\033[K"


class Terminal(io.StringIO):
    """A stream that says it is a terminal (``isatty``); its width comes from ``COLUMNS``."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def screen_lines(text: str) -> list[str]:
    """What was drawn, one entry per redraw or printed line (the erase sequence removed)."""
    return [seg for seg in re.split(r"[\r\n]", text.replace(ESC, "")) if seg]


def epoch_info(phase: str, epoch: int, epochs: int) -> dict:
    return {"phase": phase, "model": "LeNet5", "epoch": epoch, "epochs": epochs,
            "train_loss": 0.25, "val_accuracy": None if phase == "dense" else 0.5}


def drive(progress: Progress, *, trials: int = 3, epochs: int = 3, compute: int = 12) -> None:
    """Dense training, then ``trials`` trials of ``epochs`` epochs each, as the search runs them."""
    for e in range(1, 6):
        progress.epoch(epoch_info("dense", e, 5))
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("compute", {"epochs": compute})

    def objective(trial):
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("heuristic", "global-magnitude")
        for e in range(1, epochs + 1):
            progress.epoch(epoch_info("trial", e, epochs))
        return 0.5 + trial.number / 100

    study.optimize(objective, n_trials=trials, callbacks=[progress])
    progress.close()


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("columns", [12, 30, 50, 80, 200])
def test_no_line_is_wider_than_the_terminal(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = Terminal()
    drive(Progress(None, stream=stream, header="sparsesearch: study 'x' in memory"))
    width = columns - 1  # a line as wide as the terminal would wrap on some
    assert terminal_width(stream) == width
    lines = screen_lines(stream.getvalue())
    header = [line for line in lines if line.startswith("sparsesearch: study")]
    assert len(header) == 1  # printed once, with the first finished trial
    drawn = [line for line in lines if line not in header]
    assert drawn and all(len(line) <= width for line in drawn), [l for l in drawn if len(l) > width]
    after = stream.getvalue().split(header[0] + "\n", 1)[1]
    assert after.endswith("\n") and "\n" not in after[:-1]  # then one line, redrawn


def test_dense_and_trial_epochs_are_shown_on_a_terminal():
    stream = Terminal()
    drive(Progress(None, stream=stream, width=100))
    lines = screen_lines(stream.getvalue())
    dense = [line for line in lines if line.startswith("dense LeNet5")]
    assert [line.split("| ")[1].split(" epochs")[0] for line in dense] == [f"{e}/5" for e in range(1, 6)]
    assert "█" in dense[0]  # tqdm's bar, in unicode on a UTF-8 stream
    for n in range(1, 4):  # the running trial and its epoch, before its result
        assert any(line.startswith(f"trial {n}/? epoch 2/3") for line in lines), lines
    # the bar follows the epochs spent of the compute budget, epoch by epoch
    assert any("| 4/12 epochs" in line for line in lines) and any("| 9/12 epochs" in line for line in lines)
    assert lines[-1].startswith("trial 3/? |") and "best 0.5200 (#2)" in lines[-1]
    assert "epoch 3/3" not in lines[-1]  # the last line is the status after the last trial
    assert stream.getvalue().endswith("\n")


def test_the_least_important_parts_go_first(monkeypatch):
    import sparsesearch.progress as progress_module

    monkeypatch.setattr(progress_module.time, "monotonic", lambda: 1000.0)  # a stopped clock
    stream = Terminal()
    progress = Progress(None, stream=stream)
    drive(progress)
    wide = progress.line(200)
    assert re.fullmatch(r"trial 3/\? \|█[^|]+\| 9/12 epochs \| best 0\.5200 \(#2\) \| "
                        r"last #2 global-magnitude: val 0\.5200 \| \d+s elapsed \| ETA \d+s", wide), wide
    shrunk = progress.line(len(wide) - 5)  # the bar gives its room first
    assert shrunk.replace("█", "").split("|")[2:] == wide.replace("█", "").split("|")[2:]
    narrowest_bar = len(wide) - (BAR_MAX - BAR_MIN)
    assert "elapsed" in progress.line(narrowest_bar)
    for width, gone in [(narrowest_bar - 1, "elapsed"), (60, "last #2"), (45, "█"), (35, "epochs"),
                        (25, "best"), (14, "ETA")]:
        line = progress.line(width)
        assert len(line) <= width and gone not in line, (width, line)
    assert progress.line(5) == "trial"


def test_an_ascii_stream_gets_an_ascii_bar():
    class AsciiTerminal(Terminal):
        encoding = "ascii"

    stream = AsciiTerminal()
    drive(Progress(None, stream=stream, width=100))
    assert stream.getvalue().isascii() and "|###" in stream.getvalue()


def test_not_a_terminal_one_plain_line_per_finished_trial():
    stream = io.StringIO()
    progress = Progress(5, stream=stream, header="sparsesearch: study 'x' in memory")
    drive(progress, trials=3)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "sparsesearch: study 'x' in memory"
    assert len(lines) == 4 and ESC not in stream.getvalue() and "\r" not in stream.getvalue()
    for n, line in enumerate(lines[1:], start=1):
        assert re.fullmatch(
            rf"trial {n}/5 \| epochs {3 * n}/12 \| #{n - 1} global-magnitude: val 0\.5{n - 1}00 \| "
            rf"best 0\.5{n - 1}00 \(#{n - 1}\) \| \d+s elapsed \| ETA \d+s", line), line
    assert "dense" not in stream.getvalue()  # the epoch records draw nothing off a terminal


def test_trials_finished_before_the_display_count_once_and_later_ones_through_it():
    # a study with 2 trials from an earlier run; then the display starts, and (as a --workers
    # parent that polls its workers' study) it is handed trials that had already finished
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("compute", {"epochs": 40})

    def objective(trial):
        trial.set_user_attr("epochs", 4)
        return 0.5 + trial.number / 100

    study.optimize(objective, n_trials=2)
    stream = io.StringIO()
    progress = Progress(None, stream=stream)
    study.optimize(objective, n_trials=3)  # the workers' trials, seen by the parent later
    for t in study.trials[2:]:
        progress(study, t)
    lines = stream.getvalue().splitlines()
    assert [re.search(r"epochs (\d+)/40", line).group(1) for line in lines] == ["12", "16", "20"]
    assert re.search(r"best 0\.5200 \(#2\)", lines[0])  # not the last trial's, seen later


def test_the_log_handler_hands_epoch_records_to_the_display():
    stream = Terminal()
    progress = Progress(None, stream=stream, width=80)
    handler = ProgressLogHandler(progress, stream, epoch_lines=False)
    logger = logging.getLogger("sparsesearch.test_progress")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.debug("dense epoch 1/5", extra={EPOCH_RECORD: epoch_info("dense", 1, 5)})
        assert screen_lines(stream.getvalue())[-1].startswith("dense LeNet5 |")
        assert "dense epoch 1/5" not in stream.getvalue()  # not a log line without -v
        logger.warning("a warning")
        # the status line is erased before the log line and drawn again after it
        assert stream.getvalue().endswith(f"\r{ESC}a warning\n" + progress._line)
        handler.epoch_lines = True
        logger.debug("dense epoch 2/5", extra={EPOCH_RECORD: epoch_info("dense", 2, 5)})
        assert "dense epoch 2/5\n" in stream.getvalue()
    finally:
        logger.handlers[:] = []


def test_fit_logs_each_epoch_labelled_dense_or_trial(caplog):
    import torch
    from torch import nn

    from sparsesearch.data import Splits, TensorSplit

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    split = TensorSplit(x, y)
    caplog.set_level(logging.DEBUG, logger="sparsesearch.train")
    fit(nn.Linear(4, 2), split, epochs=2, lr=0.1, val_data=split)
    splits = Splits(train=split, val=split, test=None, num_classes=2, input_shape=(4,), name="t")
    train_dense(nn.Linear(4, 2), splits, epochs=3, lr=0.1)
    infos = [getattr(r, EPOCH_RECORD) for r in caplog.records if hasattr(r, EPOCH_RECORD)]
    assert [(i["phase"], i["epoch"], i["epochs"]) for i in infos] == [
        ("trial", 1, 2), ("trial", 2, 2), ("dense", 1, 3), ("dense", 2, 3), ("dense", 3, 3)]
    assert infos[0]["model"] == "Linear" and infos[0]["val_accuracy"] is not None
    assert infos[2]["val_accuracy"] is None and infos[2]["train_loss"] > 0
    caplog.clear()
    caplog.set_level(logging.INFO, logger="sparsesearch.train")  # not asked for: no record
    fit(nn.Linear(4, 2), split, epochs=1, lr=0.1)
    assert not [r for r in caplog.records if hasattr(r, EPOCH_RECORD)]


STUDY = """\
[study]
name = "p"
n_trials = 1

[model]
name = "digits-mlp"

[data]
name = "digits"

[budget]
fraction = 0.2

[search]
heuristics = ["uniform"]

[space]
epochs = 1

[compute]
epochs = 3

[dense]
epochs = 3
lr = 0.1
"""


def test_run_on_a_terminal_shows_dense_training_and_fits_the_width(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "60")
    (tmp_path / "s.toml").write_text(STUDY)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["run", "s.toml", "--no-report"]) == 0
    assert "best trial #" in capsys.readouterr().out
    assert logging.getLogger("sparsesearch.train").level == logging.NOTSET  # restored
    lines = screen_lines(terminal.getvalue())
    drawn = [line for line in lines if not line.startswith("sparsesearch")]
    assert all(len(line) <= 59 for line in drawn), [line for line in drawn if len(line) > 59]
    dense = [line for line in drawn if line.startswith("dense Sequential")]
    assert [re.search(r"(\d)/3 epochs", line).group(1) for line in dense] == ["1", "2", "3"]
    assert any(line.startswith("trial 1/1 epoch 1/1") for line in drawn), drawn
    assert lines[-1].startswith("trial ")  # the last status stays, ended by a newline
    assert terminal.getvalue().endswith("\n")


def test_run_not_on_a_terminal_prints_one_line_per_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(STUDY)
    assert main(["run", "s.toml", "--no-report"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    trials = [line for line in lines if line.startswith("trial ")]
    # the screening trial and the finalist, one plain line each
    assert len(trials) == 2, err
    assert re.fullmatch(r"trial 1/1 \| epochs 1/3 \| #0 uniform: val 0\.\d{4} \| best 0\.\d{4} \(#0\) "
                        r"\| \d+s elapsed \| ETA \d+s", trials[0]), trials[0]
    assert " final" in trials[1]
    assert "\r" not in err and ESC not in err and "epoch 1/3" not in err
    # the rest are log lines (the dense model, the study's header, the finalists)
    assert all(line.startswith("sparsesearch: ") for line in lines if line not in trials), err
