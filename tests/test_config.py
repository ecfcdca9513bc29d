"""Study files: the schema, its error messages, the packaged studies and their docs."""

from __future__ import annotations

import dataclasses
import filecmp
import inspect
import json
import os
from pathlib import Path

import pytest

import sparsesearch
from sparsesearch.config import (
    SCHEMA,
    ConfigError,
    StudyConfig,
    default_study_path,
    load_study_config,
    packaged_studies,
)
from sparsesearch.search import DenseSettings
from sparsesearch.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "default.toml",
    "digits-mlp.toml",
    "mnist-lenet300.toml",
    "fashion-mnist-lenet5.toml",
    "cifar10-resnet.toml",
}

MINIMAL = """
[model]
name = "digits-mlp"
[data]
name = "digits"
[budget]
fraction = 0.1
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the packaged studies ------------------------------------------------------------------------


def test_packaged_studies_are_shipped_and_valid():
    assert SHIPPED <= set(packaged_studies())
    for name in packaged_studies():
        cfg = load_study_config(ROOT / "sparsesearch" / "studies" / name)
        assert cfg.name == name.removesuffix(".toml")
        assert cfg.n_trials is None or cfg.n_trials > 0
        compute = cfg.search_kwargs()["compute"]  # sized by compute: a [compute] table or 4 x dense
        assert compute.epochs == cfg.compute.get("epochs") and compute.final_runs >= 1
        text = (ROOT / "sparsesearch" / "studies" / name).read_text()
        assert text.lstrip().startswith("#"), f"{name} should open with a comment"


def test_top_level_studies_folder_matches_the_package_data():
    top, pkg = ROOT / "studies", ROOT / "sparsesearch" / "studies"
    assert top.is_dir()
    if top.is_symlink():
        assert top.resolve() == pkg.resolve()
    names = sorted(p.name for p in pkg.glob("*.toml"))
    assert sorted(p.name for p in top.glob("*.toml")) == names
    match, mismatch, errors = filecmp.cmpfiles(top, pkg, names, shallow=False)
    assert not mismatch and not errors


def test_default_study_is_found_through_the_package():
    path = default_study_path()
    assert path.name == "default.toml" and path.is_file()
    cfg = load_study_config()
    assert (cfg.model, cfg.data, cfg.budget) == ("lenet5", "mnist-5k", 0.02)
    assert cfg.name == "default"


def test_torchvision_studies_use_a_local_root_relative_to_the_file():
    for name in ("mnist-lenet300.toml", "fashion-mnist-lenet5.toml", "cifar10-resnet.toml"):
        cfg = load_study_config(ROOT / "studies" / name)
        # lexically relative to studies/ (no symlink resolution): <repo>/data
        assert cfg.data_root == str(ROOT / "data"), name
    assert load_study_config(ROOT / "studies" / "cifar10-resnet.toml").device == "auto"


def test_a_bare_name_finds_a_packaged_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_study_config("digits-mlp").name == "digits-mlp"
    assert load_study_config("digits-mlp.toml").model == "digits-mlp"
    with pytest.raises(ConfigError, match="study file not found: nope.toml"):
        load_study_config("nope.toml")


# -- the schema ----------------------------------------------------------------------------------


def test_schema_covers_the_search_space_and_dense_settings():
    assert set(SCHEMA["space"]) == {f.name for f in dataclasses.fields(SearchSpace)}
    assert set(SCHEMA["dense"]) == {f.name for f in dataclasses.fields(DenseSettings)}
    from sparsesearch.fidelity import ComputeBudget

    assert set(SCHEMA["compute"]) == {f.name for f in dataclasses.fields(ComputeBudget)}


def test_docs_document_every_key():
    doc = (ROOT / "docs" / "studies.md").read_text()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in doc
        for key in keys:
            assert f"`{section}.{key}`" in doc, f"docs/studies.md lacks {section}.{key}"


def test_minimal_study_and_defaults(tmp_path):
    cfg = load_study_config(write(tmp_path, MINIMAL, "my-study.toml"))
    assert cfg.name == "my-study"
    assert cfg.n_trials is None and cfg.seed == 0 and cfg.objective == "accuracy"
    assert cfg.storage_url("runs") == f"sqlite:///{Path('runs') / 'my-study' / 'study.db'}"


def test_search_kwargs_fit_search(tmp_path):
    text = MINIMAL + """
[study]
n_trials = 3
timeout = 60
seed = 4
objective = "pareto"
[search]
strategies = "magnitude"
heuristics = ["lamp"]
pruner = "none"
exclude = ["net.5"]
num_batches = 2
[space]
lr = [0.01, 0.1]
epochs = [1, 2]
optimizer = ["sgd", "adamw"]
heuristic_lrs = [0.05]
[dense]
epochs = 2
"""
    cfg = load_study_config(write(tmp_path, text))
    kw = cfg.search_kwargs("somewhere")
    params = inspect.signature(sparsesearch.search).parameters
    assert set(kw) <= set(params), set(kw) - set(params)
    assert kw["model"] == "digits-mlp" and kw["data"] == "digits" and kw["budget"] == 0.1
    assert kw["strategies"] == ["magnitude"] and kw["heuristics"] == ["lamp"]
    assert kw["objective"] == "pareto" and kw["pruner"] == "none" and kw["seed"] == 4
    assert kw["space"].lr == (0.01, 0.1) and kw["space"].optimizers == ("sgd", "adamw")
    assert kw["dense"].epochs == 2
    assert kw["storage"].endswith("somewhere/s/study.db") and kw["runs_dir"] == "somewhere"
    assert "data_options" not in kw


def test_data_root_and_options_become_data_options(tmp_path):
    text = MINIMAL.replace('name = "digits"', 'name = "digits"\nroot = "sub/../files"\nval_fraction = 0.25\n'
                           "options = { extra = 1 }")
    cfg = load_study_config(write(tmp_path, text))
    assert cfg.data_root == str(tmp_path / "files")
    assert cfg.search_kwargs()["data_options"] == {"root": str(tmp_path / "files"), "val_fraction": 0.25, "extra": 1}


def test_config_round_trips_through_json(tmp_path):
    cfg = load_study_config(ROOT / "studies" / "cifar10-resnet.toml")
    again = StudyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_replace_ignores_missing_overrides(tmp_path):
    cfg = load_study_config(write(tmp_path, MINIMAL))
    assert cfg.replace(n_trials=None, seed=3).seed == 3
    assert cfg.replace(n_trials=5).replace(n_trials=None).n_trials == 5


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[space]\nlrr = 0.1\n", "unknown key 'space.lrr'; did you mean 'space.lr'?"),
        ("[study]\nn_trial = 3\n", "unknown key 'study.n_trial'; did you mean 'study.n_trials'?"),
        ("[dense]\nepoch = 3\n", "unknown key 'dense.epoch'; did you mean 'dense.epochs'?"),
        ("[serch]\nstrategies = ['magnitude']\n", "unknown section 'serch'; did you mean 'search'?"),
        ("[search]\nheuristic = ['lamp']\n", "did you mean 'search.heuristics'?"),
    ],
)
def test_unknown_keys_name_the_closest_valid_one(tmp_path, extra, message):
    with pytest.raises(ConfigError) as info:
        load_study_config(write(tmp_path, MINIMAL + extra))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_toml_gives_line_and_column(tmp_path):
    path = write(tmp_path, '[study]\nname = "x"\nn_trials = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_study_config(path)
    msg = str(info.value)
    assert "invalid TOML" in msg and "line 3" in msg and "column" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text, message",
    [
        (MINIMAL.replace("fraction = 0.1", "fraction = 0.1\nparams = 100"), "exactly one of params"),
        (MINIMAL.replace("fraction = 0.1", ""), "exactly one of params"),
        (MINIMAL.replace("fraction = 0.1", "fraction = 1.5"), "budget.fraction must be a number in (0, 1]"),
        (MINIMAL.replace("fraction = 0.1", "params = 0"), "budget.params must be an integer >= 1"),
        (MINIMAL.replace('name = "digits-mlp"', ""), "missing required key model.name"),
        (MINIMAL + "[study]\nobjective = 'loss'\n", "study.objective must be 'accuracy' or 'pareto'"),
        (MINIMAL + "[study]\ndevice = 'tpu'\n", "study.device must be"),
        (MINIMAL + "[study]\nn_trials = true\n", "study.n_trials must be an integer >= 0"),
        (MINIMAL + "[study]\nname = 'a/b'\n", "plain name"),
        (MINIMAL + "[search]\nheuristics = ['lampp']\n", "unknown heuristic 'lampp'"),
        (MINIMAL + "[search]\nstrategies = []\n", "strategies is empty"),
        (MINIMAL + "[space]\nlr = [0.1, 0.01]\n", "low > high"),
        (MINIMAL + "[space]\nlr = 'fast'\n", "space.lr must be a number or [low, high]"),
        (MINIMAL + "[model]\n", "Cannot declare"),  # TOML itself: a table defined twice
        ("study = 3\n" + MINIMAL, "'study' must be a table"),
    ],
)
def test_invalid_values_are_refused_in_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_study_config(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert str(tmp_path / "s.toml") in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError):
        load_study_config(os.fspath(tmp_path))  # a folder


def test_mac_budget_keys_reach_search(tmp_path):
    from sparsesearch.config import load_study_config

    path = tmp_path / "macs.toml"
    path.write_text('[model]\nname = "digits-cnn"\n[data]\nname = "digits"\n[budget]\nmacs_fraction = 0.3\n')
    kw = load_study_config(path).search_kwargs(runs_dir=tmp_path)
    assert kw["budget"] == 0.3 and kw["budget_metric"] == "macs"
    path.write_text('[model]\nname = "digits-cnn"\n[data]\nname = "digits"\n[budget]\nparams = 500\n')
    kw = load_study_config(path).search_kwargs(runs_dir=tmp_path)
    assert kw["budget"] == 500 and kw["budget_metric"] == "params"


def test_strategy_params_tables_reach_search(tmp_path):
    cfg = load_study_config(write(tmp_path, MINIMAL + '[strategy_params.magnitude]\n"m:a" = 0.5\n"m:b" = [1, 2]\n'))
    assert cfg.search_kwargs()["strategy_params"] == {"magnitude": {"m:a": 0.5, "m:b": [1, 2]}}
    with pytest.raises(ConfigError, match=r"\[strategy_params.gradient\] names a strategy that is not in search.strategies"):
        load_study_config(write(tmp_path, MINIMAL + '[strategy_params.gradient]\nx = 1\n'))
    with pytest.raises(ConfigError, match="strategy_params.magnitude.x must be a number, a string"):
        load_study_config(write(tmp_path, MINIMAL + '[strategy_params.magnitude]\nx = {y = 1}\n'))


def test_a_budget_range_for_pareto_studies(tmp_path):
    base = MINIMAL.replace("fraction = 0.1", "fraction = [0.01, 0.2]")
    cfg = load_study_config(write(tmp_path, base + '[study]\nobjective = "pareto"\n'))
    assert cfg.search_kwargs()["budget"] == [0.01, 0.2]
    with pytest.raises(ConfigError, match=r"budget.fraction range needs low < high"):
        load_study_config(write(tmp_path, MINIMAL.replace("fraction = 0.1", "fraction = [0.2, 0.1]")))
    with pytest.raises(ConfigError, match=r"budget.fraction must be a number in \(0, 1\] or \[low, high\]"):
        load_study_config(write(tmp_path, MINIMAL.replace("fraction = 0.1", "fraction = [0.1, 0.2, 0.3]")))
