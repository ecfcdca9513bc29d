"""sparsesearch.data: built-in sets, torchvision folders, module:function and plugin sources."""

from __future__ import annotations

import struct
import sys
import textwrap

import numpy as np
import pluggy
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from sparsesearch import hookspecs
from sparsesearch.data import (
    DatasetError,
    Splits,
    TensorSplit,
    _stratified_indices,
    as_splits,
    list_datasets,
    load_dataset,
)
from sparsesearch.errors import PluginError


@pytest.fixture
def bare_pm(monkeypatch):
    """A plugin manager with only sparsesearch's hookspecs, used in place of the global one."""
    import sparsesearch.plugins

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    monkeypatch.setattr(sparsesearch.plugins, "get_plugin_manager", lambda: pm)
    return pm


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def mnist5k() -> Splits:
    return load_dataset("mnist-5k", seed=0)


def _proportions(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(y, minlength=num_classes).double() / len(y)


# --- built-ins -------------------------------------------------------------------------------


def test_digits_shapes_and_sizes(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1079, 359, 359)
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.name == "digits"
    for split in (digits.train, digits.val, digits.test):
        assert isinstance(split, TensorSplit)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
    x, y = digits.train[3]
    assert x.shape == (1, 8, 8) and y.dtype == torch.int64


def test_digits_normalised_with_train_statistics(digits):
    assert abs(float(digits.train.x.mean())) < 1e-4
    assert abs(float(digits.train.x.std()) - 1) < 1e-3
    # val/test use the train statistics, so they are only approximately standardised
    assert abs(float(digits.val.x.mean())) < 0.1


def test_mnist_5k_shapes_and_sizes(mnist5k):
    assert (len(mnist5k.train), len(mnist5k.val), len(mnist5k.test)) == (3000, 1000, 1000)
    assert mnist5k.input_shape == (1, 28, 28)
    assert mnist5k.num_classes == 10
    assert mnist5k.train.x.shape == (3000, 1, 28, 28)
    assert torch.isfinite(mnist5k.train.x).all()


@pytest.mark.parametrize("fixture", ["digits", "mnist5k"])
def test_splits_are_stratified(fixture, request):
    splits = request.getfixturevalue(fixture)
    everything = torch.cat([splits.train.y, splits.val.y, splits.test.y])
    overall = _proportions(everything, splits.num_classes)
    for split in (splits.train, splits.val, splits.test):
        assert (_proportions(split.y, splits.num_classes) - overall).abs().max() < 0.01


def test_same_seed_same_tensors_other_seed_other_split(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(digits.train.y, other.train.y)
    assert not torch.equal(digits.test.x, other.test.x)


def test_split_indices_partition_the_data():
    labels = np.repeat(np.arange(5), 20)
    train, val, test = _stratified_indices(labels, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert len(train) + len(val) + len(test) == 100
    assert sorted(np.concatenate([train, val, test])) == list(range(100))
    assert (len(val), len(test)) == (20, 20)


def test_fractions_override_and_test_fraction_zero():
    splits = load_dataset("digits", val_fraction=0.1, test_fraction=0.0)
    assert splits.test is None
    assert len(splits.val) == round(0.1 * 1797)
    assert len(splits.train) == 1797 - len(splits.val)


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.2}, {"val_fraction": 0.6, "test_fraction": 0.5}]
)
def test_bad_fractions_are_refused(kwargs):
    with pytest.raises(DatasetError, match="fraction"):
        load_dataset("digits", **kwargs)


def test_builtin_rejects_unknown_options():
    with pytest.raises(DatasetError, match="takes no options"):
        load_dataset("digits", colour=True)


def test_unknown_name_lists_known_names(bare_pm):
    with pytest.raises(DatasetError) as info:
        load_dataset("mnits")
    message = str(info.value)
    assert "\n" not in message
    for name in ("digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10"):
        assert name in message
    assert "did you mean mnist" in message
    assert isinstance(info.value, ValueError)


def test_list_datasets(bare_pm):
    assert {"digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10"} <= set(list_datasets())


# --- torchvision folders ---------------------------------------------------------------------


def _write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format torchvision's MNIST reads (big-endian dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root, folder: str, per_class_train: int = 6, per_class_test: int = 2) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.tile(np.arange(10), per_class)
        rng = np.random.default_rng(0)
        # each image is its label's grey level plus a little noise
        images = labels[:, None, None] * 20 + rng.integers(0, 5, (len(labels), 28, 28))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_mnist_from_local_idx_files(tmp_path, name, folder):
    _write_mnist(tmp_path, folder)
    splits = load_dataset(name, root=tmp_path, val_fraction=0.2, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 20)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert isinstance(splits.test, TensorSplit)
    assert torch.equal(torch.bincount(splits.test.y), torch.full((10,), 2))
    # normalised inputs keep the order of the grey levels, so they still encode the label
    for split in (splits.train, splits.val, splits.test):
        means = split.x.mean(dim=(1, 2, 3))
        order = torch.argsort(means)
        assert torch.all(split.y[order][1:] >= split.y[order][:-1])
    assert abs(float(splits.train.x.mean())) < 1e-4
    again = load_dataset(name, root=tmp_path, val_fraction=0.2, seed=0)
    assert torch.equal(again.train.x, splits.train.x)


def test_torchvision_val_split_is_stratified(tmp_path):
    _write_mnist(tmp_path, "MNIST", per_class_train=10)
    splits = load_dataset("mnist", root=tmp_path, val_fraction=0.2)
    assert torch.equal(torch.bincount(splits.val.y), torch.full((10,), 2))
    assert torch.equal(torch.bincount(splits.train.y), torch.full((10,), 8))


def test_torchvision_missing_files_name_the_expected_path(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "download=False" in message and "\n" not in message


def test_torchvision_partial_files_name_the_first_missing(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize(("name", "expected"), [("mnist", "MNIST/raw/"), ("cifar10", "cifar-10-batches-py/")])
def test_torchvision_without_root(name, expected):
    with pytest.raises(DatasetError, match=expected):
        load_dataset(name)


def test_torchvision_has_no_test_fraction(tmp_path):
    with pytest.raises(DatasetError, match="official test split"):
        load_dataset("mnist", root=tmp_path, test_fraction=0.1)


# --- module:function -------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_toy_data.py").write_text(textwrap.dedent(
        """
        import torch
        from torch.utils.data import Dataset, TensorDataset

        calls = []

        def make(*, seed, n=40, features=5):
            calls.append({"seed": seed, "n": n})
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(n, features, generator=g)
            y = torch.arange(n) % 3
            return TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:])

        class Pairs(Dataset):
            num_classes = 7

            def __len__(self):
                return 4

            def __getitem__(self, i):
                return torch.zeros(2, 3), i

        def generic(**kwargs):
            calls.append(kwargs)
            return Pairs(), Pairs(), Pairs()

        def broken(*, seed):
            return "not datasets"
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_toy_data", raising=False)
    import my_toy_data

    return my_toy_data


def test_module_function_source(user_module):
    splits = load_dataset("my_toy_data:make", seed=5, root="/ignored", n=36)
    assert user_module.calls == [{"seed": 5, "n": 36}]  # root not accepted, so not passed
    assert isinstance(splits.train, TensorSplit)  # TensorDatasets are batched in memory
    assert (len(splits.train), len(splits.val), splits.test) == (30, 6, None)
    assert splits.input_shape == (5,)
    assert splits.num_classes == 3
    assert splits.name == "my_toy_data:make"


def test_module_function_with_kwargs_and_num_classes_attribute(user_module):
    splits = load_dataset("my_toy_data:generic", seed=2, root="/data", extra=1)
    assert user_module.calls == [{"seed": 2, "root": "/data", "extra": 1}]
    assert splits.num_classes == 7 and splits.input_shape == (2, 3)
    assert len(splits.test) == 4


def test_module_function_num_classes_option(user_module):
    assert load_dataset("my_toy_data:make", num_classes=12).num_classes == 12


def test_module_function_errors(user_module):
    with pytest.raises(DatasetError, match="does not accept option"):
        load_dataset("my_toy_data:make", colour=1)
    with pytest.raises(DatasetError, match="expected \\(train, val\\)"):
        load_dataset("my_toy_data:broken")
    with pytest.raises(DatasetError, match="has no 'missing'"):
        load_dataset("my_toy_data:missing")
    with pytest.raises(DatasetError) as info:
        load_dataset("no_such_module_xyz:make")
    assert "cannot import 'no_such_module_xyz'" in str(info.value)
    assert "\n" not in str(info.value)


def test_as_splits():
    x, y = torch.randn(12, 4), torch.arange(12) % 2
    splits = as_splits((TensorDataset(x[:8], y[:8]), TensorDataset(x[8:], y[8:])))
    assert splits.num_classes == 2 and splits.input_shape == (4,)
    assert as_splits(splits) is splits
    with pytest.raises(DatasetError, match="dataset name"):
        as_splits(42)


# --- plugins ---------------------------------------------------------------------------------


class _ToyDataPlugin:
    seen: list = []

    @hookspecs.hookimpl
    def sparsesearch_register_datasets(self, register):
        def loader(*, seed, root, size=10):
            self.seen.append((seed, root, size))
            x = torch.randn(size, 3)
            y = torch.arange(size) % 2
            return TensorDataset(x, y), TensorDataset(x, y), TensorDataset(x, y)

        register("toy", loader)


def test_plugin_registered_dataset(bare_pm):
    _ToyDataPlugin.seen = []
    bare_pm.register(_ToyDataPlugin())
    assert "toy" in list_datasets()
    splits = load_dataset("toy", seed=4, root="/r", size=6)
    assert _ToyDataPlugin.seen == [(4, "/r", 6)]
    assert splits.num_classes == 2 and len(splits.test) == 6 and splits.name == "toy"


def test_plugin_cannot_shadow_a_builtin():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)

    class Shadow:
        @hookspecs.hookimpl
        def sparsesearch_register_datasets(self, register):
            register("digits", lambda **kw: None)

    pm.register(Shadow(), name="shadow")
    with pytest.raises(PluginError, match="'shadow' registered dataset 'digits'"):
        list_datasets(pm)


def test_generic_dataset_labels_infer_num_classes():
    class Seq(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.zeros(1), torch.tensor(i)

    splits = as_splits((Seq(), Seq()))
    assert splits.num_classes == 5 and splits.input_shape == (1,)


@pytest.mark.parametrize("split", [0, 1, 2])
def test_non_finite_inputs_are_refused_naming_the_split(split):
    parts = [TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,))) for _ in range(3)]
    parts[split].tensors[0][3, 1] = float("inf") if split else float("nan")
    with pytest.raises(DatasetError, match=f"its {('train', 'val', 'test')[split]} split holds 1 "
                                           "non-finite input value"):
        as_splits(tuple(parts))
