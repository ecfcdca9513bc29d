"""Models: a small zoo, torchvision architectures, ``module:function`` and plugin factories.

Weights are never downloaded: torchvision models are built with ``weights=None`` and trained
by ``sparsesearch.train`` (or loaded from a local checkpoint with :func:`load_checkpoint`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from sparsesearch.errors import SparsesearchError
from sparsesearch.plugins import collect_named, import_callable

__all__ = [
    "ModelError",
    "build_model",
    "example_input",
    "list_models",
    "load_checkpoint",
    "locked_cache",
]

Factory = Callable[..., nn.Module]


class ModelError(SparsesearchError):
    """Unknown model name, bad model arguments, or a checkpoint that does not fit."""


# ---------------------------------------------------------------------------------------------
# the zoo


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _in_features(in_features: int | None, input_shape: Sequence[int] | None, default: int) -> int:
    if in_features is not None:
        return int(in_features)
    return math.prod(input_shape) if input_shape is not None else default


def lenet300(
    *, num_classes: int = 10, in_features: int | None = None, input_shape: Sequence[int] | None = None
) -> nn.Module:
    """LeNet-300-100: the 784-300-100-10 MLP (LeCun et al. 1998); flattens its input."""
    return _mlp([_in_features(in_features, input_shape, 784), 300, 100, num_classes])


def digits_mlp(
    *, num_classes: int = 10, in_features: int | None = None, input_shape: Sequence[int] | None = None
) -> nn.Module:
    """A small 64-64-32-10 MLP for sklearn's 8×8 digits."""
    return _mlp([_in_features(in_features, input_shape, 64), 64, 32, num_classes])


def _conv_geometry(
    in_channels: int | None, input_shape: Sequence[int] | None, default: tuple[int, int, int]
) -> tuple[int, int, int]:
    c, h, w = tuple(input_shape) if input_shape is not None else default
    return (int(in_channels) if in_channels is not None else c), int(h), int(w)


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant: conv 20@5×5 → pool → conv 50@5×5 → pool → fc 500 → fc classes."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size=(28, 28)):
        super().__init__()
        h, w = image_size
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ModelError(f"lenet5 needs inputs of at least 16×16, got {h}×{w}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * fh * fw, 500), nn.ReLU(), nn.Linear(500, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def lenet5(
    *, num_classes: int = 10, in_channels: int | None = None, input_shape: Sequence[int] | None = None
) -> nn.Module:
    """LeNet-5 (Caffe variant) for 1×28×28 inputs by default."""
    c, h, w = _conv_geometry(in_channels, input_shape, (1, 28, 28))
    return LeNet5(num_classes=num_classes, in_channels=c, image_size=(h, w))


class DigitsCNN(nn.Module):
    """A tiny CNN for 1×8×8 digits: conv 16 → conv 32 → pool → fc 64 → fc classes."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size=(8, 8)):
        super().__init__()
        h, w = image_size
        if h < 2 or w < 2:
            raise ModelError(f"digits-cnn needs inputs of at least 2×2, got {h}×{w}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_cnn(
    *, num_classes: int = 10, in_channels: int | None = None, input_shape: Sequence[int] | None = None
) -> nn.Module:
    """A tiny CNN for 1×8×8 digits."""
    c, h, w = _conv_geometry(in_channels, input_shape, (1, 8, 8))
    return DigitsCNN(num_classes=num_classes, in_channels=c, image_size=(h, w))


class BasicBlock(nn.Module):
    """3×3 conv-BN-ReLU-conv-BN plus a shortcut (1×1 conv + BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3 stages of widths w, 2w, 4w; depth = 6n + 2."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 16, depth: int = 20):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(f"cifar-resnet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth=}")
        if width < 1:
            raise ModelError(f"cifar-resnet width must be >= 1, got {width=}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, planes = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes, w, stride=2 if (i > 0 and j == 0) else 1))
                planes = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def cifar_resnet(
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    input_shape: Sequence[int] | None = None,
    width: int = 16,
    depth: int = 20,
) -> nn.Module:
    """ResNet-20-style CIFAR network (``depth`` 6n+2, ``width`` of the first stage)."""
    c, _, _ = _conv_geometry(in_channels, input_shape, (3, 32, 32))
    return CifarResNet(num_classes=num_classes, in_channels=c, width=width, depth=depth)


_ZOO: dict[str, Factory] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "digits-mlp": digits_mlp,
    "digits-cnn": digits_cnn,
    "cifar-resnet": cifar_resnet,
}


# ---------------------------------------------------------------------------------------------
# registry and building


def _registry(pm: Any = None) -> dict[str, Factory]:
    """Model factories registered by plugins through ``sparsesearch_register_models``."""
    return collect_named("sparsesearch_register_models", "model", _ZOO, pm)


def list_models(pm: Any = None) -> list[str]:
    """Zoo and plugin model names. Any torchvision classification model name (``resnet18``,
    ``mobilenet_v2``, ...) and ``"package.module:function"`` work as well."""
    return sorted([*_ZOO, *_registry(pm)])


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm  # torchvision is slow to import

    return list(tvm.list_models(module=tvm))


def _import_function(spec: str) -> Factory:
    return import_callable(spec, kind="model", error=ModelError)


def _accepts(factory: Callable, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _call(name: str, factory: Factory, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except ModelError:
        raise
    except TypeError as exc:
        raise ModelError(f"model {name!r} rejected its arguments {sorted(kwargs)}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def build_model(name: str, *, input_shape: Sequence[int] | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with fresh (untrained) weights.

    ``name`` is a zoo name (see :func:`list_models`), a plugin-registered name, a torchvision
    classification model (built with ``weights=None``; pretrained weights are refused: offline),
    or ``"package.module:function"``. ``kwargs`` (e.g. ``num_classes=10``) go to the factory.
    ``input_shape`` (C, H, W of the data) adapts zoo models' input layers and is passed to
    other factories only when they accept it (torchvision models never get it).
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name must be a non-empty string, got {name!r}")
    if kwargs.get("weights") is not None or kwargs.get("weights_backbone") is not None:
        raise ModelError(
            f"model {name!r}: pretrained weights are not supported (sparsesearch is offline); "
            "pass a local checkpoint to load_checkpoint() instead"
        )
    kwargs.pop("weights", None)
    kwargs.pop("weights_backbone", None)
    if name in _ZOO:
        factory = _ZOO[name]
    else:
        plugins = _registry() if ":" not in name else {}
        if name in plugins:
            factory = plugins[name]
        elif ":" in name:
            factory = _import_function(name)
        else:
            tv_names = _torchvision_names()
            if name not in tv_names:
                known = sorted([*_ZOO, *plugins])
                close = difflib.get_close_matches(name, known + tv_names, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ModelError(
                    f"unknown model {name!r}; {hint}known: {', '.join(known)}, any torchvision "
                    "classification model, or 'package.module:function'"
                )
            import torchvision.models as tvm  # torchvision is slow to import

            return _call(name, lambda **kw: tvm.get_model(name, weights=None, **kw), kwargs)
    if input_shape is not None and _accepts(factory, "input_shape"):
        kwargs["input_shape"] = tuple(input_shape)
    return _call(name, factory, kwargs)


# ---------------------------------------------------------------------------------------------
# checkpoints and inputs


def _state_dict_from(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"checkpoint {path} holds no state_dict (a mapping of names to tensors, "
            "or a dict with one under 'state_dict' or 'model')"
        )
    return obj


def _why_unreadable(exc: BaseException) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in our words (torch's
    own message advises ``weights_only=False``, which would run the file's pickled code)."""
    text = str(exc)
    if isinstance(exc, EOFError) or not text.strip():
        return "the file is empty or truncated"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds a pickled Python object ({found.group(1)}), not only tensors and plain "
                "containers, and such objects are never loaded (they can run code)")
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        return "it is not a file written by torch.save (or it is damaged)"
    if "zip archive" in text or "PytorchStreamReader" in text:
        return "it is a damaged or truncated torch.save file"
    first = " ".join(text.split())[:160]
    return f"{type(exc).__name__}: {first}"


def read_state_file(path: str | os.PathLike, *, what: str = "checkpoint",
                    error: type[SparsesearchError] | None = None, hint: str | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, every failure one line
    (``error``, default :class:`ModelError`) saying what the file is and how to write one
    that loads safely; torch's warnings are not passed on."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, ImportError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise (error or ModelError)(
            f"cannot load {what} {path}: {_why_unreadable(exc)}; sparsesearch reads only "
            "tensors (torch.load with weights_only=True). "
            + (hint or "Write it from the trained model as torch.save(model.state_dict(), path) "
                       "(or with safetensors) and load that")
        ) from None
    except OSError as exc:
        raise (error or ModelError)(
            f"cannot read {what} {path}: {exc.strerror or exc}"
        ) from None


def locked_cache(path: str | os.PathLike, compute: Callable[[], Any], *,
                 save: Callable[[Any, Path], None], load: Callable[[Path], Any]) -> Any:
    """The value cached in the file ``path``: ``load(path)`` when the file is there (``load``
    may return None: unreadable, computed again), else ``compute()``, written there atomically
    (``save(value, temporary file)`` next to it, then renamed). All under a file lock next to
    it, so of several processes (workers) one computes and the others wait and load."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            value = load(path)
            if value is not None:
                return value
        value = compute()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save(value, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return value


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strictly) and return it.

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain containers,
    never arbitrary pickled objects. It may hold a state_dict or a dict with one under
    ``"state_dict"`` or ``"model"``; a ``"module."`` prefix (DataParallel) is stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    obj = read_state_file(path, what="checkpoint")
    state = dict(_state_dict_from(obj, path))
    own = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(
        k.startswith("module.") for k in own
    ):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise ModelError(
            f"checkpoint {path} does not fit {type(model).__name__}: {'; '.join(parts)}"
        )
    model.load_state_dict(state)
    return model


def example_input(
    input_shape: Sequence[int], batch: int = 2, *, seed: int = 0, device: Any = "cpu"
) -> torch.Tensor:
    """A seeded standard-normal batch of shape ``(batch, *input_shape)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=gen).to(device)
