"""Exporting trials: file layout, formats, rebuilding from the dense cache, errors."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.trial import TrialState

import sparsesearch
from sparsesearch.config import StudyConfig
from sparsesearch.errors import SparsesearchError
from sparsesearch.export import (
    CONFIG_ATTR,
    config_from_study,
    export_trial,
    has_safetensors,
    load_state_dict,
    output_paths,
    save_state_dict,
    trial_recipe,
)
from sparsesearch.recipe import Recipe, load_recipe


def nonzero(state: dict[str, torch.Tensor]) -> int:
    return sum(int(torch.count_nonzero(v)) for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny stored study, searched the way `sparsesearch run` searches (seeded first)."""
    tmp = tmp_path_factory.mktemp("export")
    storage = f"sqlite:///{tmp / 'study.db'}"
    torch.manual_seed(0)  # as the CLI does: the initial weights, hence the dense cache key
    result = sparsesearch.search(
        "digits-mlp", "digits", 0.1, n_trials=4, seed=0, storage=storage, study_name="e",
        runs_dir=tmp / "runs", dense={"epochs": 3, "lr": 0.1}, heuristics=["uniform", "lamp"],
        space={"lr": [0.02, 0.3], "epochs": 1, "heuristic_lrs": [0.05]}, pruner="none",
    )
    return result, storage, tmp


def test_output_paths(tmp_path):
    assert output_paths(tmp_path / "m.pt") == (tmp_path / "m.pt", tmp_path / "m.recipe.json")
    assert output_paths(tmp_path / "m.pth") == (tmp_path / "m.pth", tmp_path / "m.recipe.json")
    assert output_paths(tmp_path / "m.safetensors") == (tmp_path / "m.safetensors", tmp_path / "m.recipe.json")
    model, recipe = output_paths(tmp_path / "folder")
    assert model.parent == tmp_path / "folder" and recipe == tmp_path / "folder" / "recipe.json"
    assert model.name == ("model.safetensors" if has_safetensors() else "model.pt")
    with pytest.raises(SparsesearchError, match="recipe JSON is written next to the model"):
        output_paths(tmp_path / "r.json")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(SparsesearchError, match="not a folder"):
        output_paths(tmp_path / "file.bin")
    for name in ("m.txt", "m.onnx", "m.pt2"):  # read as files: not silently made into folders
        with pytest.raises(SparsesearchError, match="a model file ends in .safetensors, .pt, .pth"):
            output_paths(tmp_path / name)
    assert output_paths(tmp_path / "run.v2")[0].parent == tmp_path / "run.v2"  # a dotted folder


def test_a_bad_out_fails_before_the_trial_is_rebuilt(searched, tmp_path):
    result, storage, tmp = searched
    study = optuna.load_study(study_name="e", storage=storage)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SparsesearchError, match="afile is not a folder"):
        export_trial(study, tmp_path / "afile" / "sub" / "m.pt", trial=0, runs_dir=tmp / "runs")


def test_state_dict_formats(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_state_dict(model, tmp_path / "a" / "m.pt")
    state = torch.load(path, weights_only=True)
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], model.weight.detach())
    if has_safetensors():
        path = save_state_dict(model, tmp_path / "m.safetensors")
        assert torch.equal(load_state_dict(path)["bias"], model.bias.detach())
    else:
        with pytest.raises(SparsesearchError, match="safetensors package is not installed"):
            save_state_dict(model, tmp_path / "m.safetensors")
        assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*tmp"))


def test_export_rebuilds_a_trial_from_the_dense_cache(searched, tmp_path):
    result, storage, tmp = searched
    study = optuna.load_study(study_name="e", storage=storage)
    others = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number != result.best_trial.number]
    trial = others[0]
    dense_files = sorted((tmp / "runs" / "e").glob("dense-*.pt"))
    assert len(dense_files) == 1
    # no sparsesearch_config attribute: the config comes from the search settings
    assert CONFIG_ATTR not in study.user_attrs
    out = export_trial(study, tmp_path / "t.pt", trial=trial.number, runs_dir=tmp / "runs")
    assert out.source == "rebuilt" and out.trial == trial.number
    assert sorted((tmp / "runs" / "e").glob("dense-*.pt")) == dense_files  # the cache was used
    assert out.matches, (out.val_accuracy, out.stored_val_accuracy)
    state = torch.load(out.model_path, weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) or "parametrizations" in k for k in state)
    assert nonzero(state) <= study.user_attrs["budget_params"]
    assert out.params == trial.user_attrs["params"]
    recipe = load_recipe(out.recipe_path)
    assert recipe.extra["trial"] == trial.number and recipe.extra["study"] == "e"
    assert recipe.sparsity == Recipe.from_dict(trial.user_attrs["recipe"]).sparsity
    data = json.loads(out.recipe_path.read_text())
    assert data["format"] == "sparsesearch.recipe/1" and data["params"] == out.params


def test_export_of_the_best_uses_best_pt(searched, tmp_path):
    result, storage, tmp = searched
    study = optuna.load_study(study_name="e", storage=storage)
    run_dir = tmp / "runs" / "e"
    save_state_dict(result.model, run_dir / "best.pt")  # what `sparsesearch run` writes
    trial_recipe(study, result.best_trial).to_json(run_dir / "best.recipe.json")
    out = export_trial(study, tmp_path / "best", runs_dir=tmp / "runs")
    assert out.source == "best.pt" and out.trial == result.best_trial.number
    assert out.model_path.parent == tmp_path / "best" and out.recipe_path.name == "recipe.json"
    exported = load_state_dict(out.model_path)
    for k, v in result.model.state_dict().items():
        assert torch.equal(exported[k], v.cpu())


def test_export_with_an_explicit_config_rebuilds_the_best_too(searched, tmp_path):
    result, storage, tmp = searched
    study = optuna.load_study(study_name="e", storage=storage)
    cfg = config_from_study(study)
    assert isinstance(cfg, StudyConfig) and cfg.model == "digits-mlp" and cfg.data == "digits"
    other_runs = tmp_path / "runs"  # no best.pt there, no dense cache: trained again, same seed
    out = export_trial(study, tmp_path / "b.pt", config=cfg, runs_dir=other_runs)
    assert out.source == "rebuilt" and out.trial == result.best_trial.number
    assert out.matches
    assert list((other_runs / "e").glob("dense-*.pt"))


def test_export_errors(searched, tmp_path):
    _, storage, tmp = searched
    study = optuna.load_study(study_name="e", storage=storage)
    with pytest.raises(SparsesearchError, match="has no trial 99"):
        export_trial(study, tmp_path / "x.pt", trial=99, runs_dir=tmp / "runs")
    failed = optuna.create_study(storage=storage, study_name="f")
    failed.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    with pytest.raises(SparsesearchError, match="trial 0 is FAIL, not COMPLETE"):
        export_trial(failed, tmp_path / "x.pt", trial=0)
    with pytest.raises(SparsesearchError, match="no COMPLETE trial"):
        export_trial(failed, tmp_path / "x.pt")
    failed.set_user_attr("settings", {"data": "(datasets)", "model": "Sequential"})
    with pytest.raises(SparsesearchError, match="in-memory datasets"):
        config_from_study(failed)


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    """A tiny l1-filter (channel) study of digits-cnn."""
    tmp = tmp_path_factory.mktemp("structured")
    storage = f"sqlite:///{tmp / 'study.db'}"
    torch.manual_seed(0)
    result = sparsesearch.search(
        "digits-cnn", "digits", 0.3, strategies=["l1-filter"], n_trials=2, seed=0, storage=storage,
        study_name="s", runs_dir=tmp / "runs", dense={"epochs": 2, "lr": 0.1},
        space={"lr": 0.1, "epochs": 1}, heuristics=["uniform"], pruner="none",
    )
    return result, storage, tmp


def test_export_of_a_structured_trial_writes_a_compacted_program(structured, tmp_path):
    import subprocess
    import sys

    from sparsesearch.compact import compact
    from sparsesearch.export import dense_for, example_batch, rebuild_trial

    result, storage, tmp = structured
    study = optuna.load_study(study_name="s", storage=storage)
    assert result.best_trial.user_attrs["granularity"] == "channel"
    out = export_trial(study, tmp_path / "m.pt", runs_dir=tmp / "runs")
    assert out.program_path == tmp_path / "m.pt2" and out.program_path.is_file()
    assert out.compacted_params is not None and out.compacted_params < sum(
        v.numel() for v in torch.load(out.model_path, weights_only=True).values())
    if out.onnx_path is None:  # no onnx package here: skipped with one line, never a crash
        assert any("ONNX export skipped" in n for n in out.notes)
    else:
        assert out.onnx_path.is_file()
    # the reference: the compacted model, built here
    cfg = config_from_study(study)
    model, _ = rebuild_trial(study, result.best_trial, cfg, runs_dir=tmp / "runs", device="cpu")
    _, splits = dense_for(study, cfg, runs_dir=tmp / "runs")
    x = example_batch(splits, 2)
    compacted = compact(model.eval(), example_input=x, keep_masks=False).model.eval()
    with torch.no_grad():
        expected = compacted(x)
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "y.pt")
    # load and run it in a fresh interpreter that never imports sparsesearch (no model class)
    code = (
        "import sys, torch\n"
        f"ep = torch.export.load({str(out.program_path)!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}); y = torch.load({str(tmp_path / 'y.pt')!r})\n"
        "got = ep.module()(x)\n"
        "assert torch.allclose(got, y, atol=1e-5), (got - y).abs().max()\n"
        "assert not any(m.startswith('sparsesearch') for m in sys.modules)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


def test_report_of_a_structured_study_times_dense_and_compacted(structured, tmp_path):
    from sparsesearch.report import write_report

    _, storage, tmp = structured
    study = optuna.load_study(study_name="s", storage=storage)
    text = write_report(study, tmp_path / "r", runs_dir=tmp / "runs").read_text()
    section = text.split("## CPU latency")[1].split("\n## ")[0]
    assert "| batch | dense (ms) | compacted (ms) | speed-up |" in section
    assert "| batch 1 |" in section and "| batch 64 |" in section
    assert "interleaved rounds" in section and "blocked_autorange" in section
    import re

    for lo, med_hi in re.findall(r"\(([0-9.]+)–([0-9.]+)\)", section):  # the spread: low <= high
        assert float(lo) <= float(med_hi)
    text = write_report(study, tmp_path / "r2", runs_dir=tmp_path / "nothing").read_text()
    assert "Latency not measured: no dense-model cache" in text
    assert "## CPU latency" not in write_report(study, tmp_path / "r3", latency=False).read_text()


# -- programs that load without the model class: any batch size (issue 14) ----------------------


def _masked_reference(model_name: str, model_path):
    """The exported state_dict in a fresh model of the study: the masked (uncompacted) model."""
    from sparsesearch.models import build_model

    model = build_model(model_name)
    model.load_state_dict(load_state_dict(model_path))
    return model.eval()


def _inputs(study, tmp, batch: int) -> torch.Tensor:
    from sparsesearch.export import dense_for, example_batch

    _, splits = dense_for(study, config_from_study(study), runs_dir=tmp / "runs")
    shape = example_batch(splits, 1).shape[1:]
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_the_exported_program_takes_any_batch_size(kind, request, tmp_path):
    fixture, model_name, name = {"unstructured": ("searched", "digits-mlp", "e"),
                                 "structured": ("structured", "digits-cnn", "s")}[kind]
    result, storage, tmp = request.getfixturevalue(fixture)
    study = optuna.load_study(study_name=name, storage=storage)
    out = export_trial(study, tmp_path / "m.pt", runs_dir=tmp / "runs", trial=result.best_trial.number)
    assert out.program_path is not None and out.program_path.is_file(), out.notes
    assert not any("batch size fixed" in n for n in out.notes), out.notes
    program = torch.export.load(out.program_path).module()
    reference = _masked_reference(model_name, out.model_path)
    for batch in (1, 64):
        x = _inputs(study, tmp, batch)
        with torch.no_grad():
            got, expected = program(x), reference(x)
        assert got.shape == (batch, 10)
        assert torch.allclose(got, expected, atol=1e-4), (batch, (got - expected).abs().max())


# -- `sparsesearch export` prints the count the budget is measured in (issue 14) ---------------


def _export_line(capsys, storage, name, trial, runs_dir, out) -> str:
    from sparsesearch.cli import main

    assert main(["export", "--storage", storage, "--study-name", name, "--trial", str(trial),
                 "--runs-dir", str(runs_dir), "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial #")]
    assert len(lines) == 1
    return lines[0]


def test_export_prints_the_budgeted_parameter_count(structured, tmp_path, capsys):
    result, storage, tmp = structured
    study = optuna.load_study(study_name="s", storage=storage)
    trial = study.trials[result.best_trial.number]
    # a channel trial counts its compacted model, in the unit of the budget
    stored, budget = trial.user_attrs["params"], study.user_attrs["budget_params"]
    line = _export_line(capsys, storage, "s", trial.number, tmp / "runs", tmp_path / "m.pt")
    assert f"trial #{trial.number} (rebuilt from the dense model): {stored:,} params (budget {budget:,} params)" in line
    assert stored <= budget
    from sparsesearch.budget import count_params

    model = _masked_reference("digits-cnn", tmp_path / "m.pt")
    uncompacted = count_params(model).remaining
    # the compacted model trained; its weights went back into the full-size state_dict, zero
    # wherever a channel was removed (its consumers' input slices included)
    assert uncompacted <= stored
    assert (uncompacted == stored) != (f"{uncompacted:,} non-zero in the uncompacted state_dict" in line)


@pytest.fixture(scope="module")
def mac_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("macs")
    storage = f"sqlite:///{tmp / 'study.db'}"
    torch.manual_seed(0)
    result = sparsesearch.search(
        "digits-cnn", "digits", 0.3, budget_metric="macs", strategies=["l1-filter"], n_trials=1,
        seed=0, storage=storage, study_name="m", runs_dir=tmp / "runs", dense={"epochs": 1, "lr": 0.1},
        space={"lr": 0.1, "epochs": 1}, heuristics=["uniform"], pruner="none",
    )
    return result, storage, tmp


def test_export_of_a_mac_study_prints_macs(mac_study, tmp_path, capsys):
    result, storage, tmp = mac_study
    study = optuna.load_study(study_name="m", storage=storage)
    trial = study.trials[result.best_trial.number]
    macs, budget = trial.user_attrs["macs"], study.user_attrs["budget_macs"]
    line = _export_line(capsys, storage, "m", trial.number, tmp / "runs", tmp_path / "m.pt")
    assert f": {macs:,} MACs per sample (budget {budget:,} MACs per sample), " in line, line
    assert f"{trial.user_attrs['params']:,} params" in line


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_the_onnx_export_runs_in_onnxruntime_at_any_batch_size(kind, request, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fixture, model_name, name = {"unstructured": ("searched", "digits-mlp", "e"),
                                 "structured": ("structured", "digits-cnn", "s")}[kind]
    result, storage, tmp = request.getfixturevalue(fixture)
    study = optuna.load_study(study_name=name, storage=storage)
    out = export_trial(study, tmp_path / "m.pt", runs_dir=tmp / "runs", trial=result.best_trial.number)
    assert out.onnx_path == tmp_path / "m.onnx" and out.onnx_path.is_file(), out.notes
    session = ort.InferenceSession(str(out.onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    reference = _masked_reference(model_name, out.model_path)
    for batch in (1, 64):
        x = _inputs(study, tmp, batch)
        (got,) = session.run(None, {inp.name: x.numpy()})
        with torch.no_grad():
            expected = reference(x)
        assert got.shape == (batch, 10)
        assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4), batch


def test_the_safetensors_export_holds_the_state_dict(searched, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    result, storage, tmp = searched
    study = optuna.load_study(study_name="e", storage=storage)
    trial = result.best_trial.number
    st = export_trial(study, tmp_path / "m.safetensors", trial=trial, runs_dir=tmp / "runs", programs=False)
    pt = export_trial(study, tmp_path / "m.pt", trial=trial, runs_dir=tmp / "runs", programs=False)
    assert st.model_path == tmp_path / "m.safetensors" and st.recipe_path == tmp_path / "m.recipe.json"
    loaded, expected = load_file(str(st.model_path)), torch.load(pt.model_path, weights_only=True)
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    model = _masked_reference("digits-mlp", st.model_path)  # loads into the model as is
    assert nonzero(model.state_dict()) <= study.user_attrs["budget_params"]
    folder = export_trial(study, tmp_path / "dir", trial=trial, runs_dir=tmp / "runs", programs=False)
    assert folder.model_path == tmp_path / "dir" / "model.safetensors"  # the folder default
