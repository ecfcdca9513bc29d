"""Training: dense training (cached once per study), fine-tuning with a per-epoch callback,
evaluation, and in-memory batching. The only module in sparsesearch that runs training loops.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sparsesearch.data import Splits, TensorSplit
from sparsesearch.errors import SparsesearchError
from sparsesearch.models import load_checkpoint, locked_cache

__all__ = [
    "EPOCH_RECORD",
    "FitResult",
    "NonFiniteLossError",
    "TrainingError",
    "evaluate",
    "evaluate_loss",
    "fit",
    "iterate_batches",
    "resolve_device",
    "train_dense",
]

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "constant")

_log = logging.getLogger("sparsesearch.train")
# The attribute of the DEBUG record that :func:`fit` logs after each epoch on
# "sparsesearch.train": a dict with "phase" ("dense" inside :func:`train_dense`, else "trial"),
# "model" (its class name), "epoch" (1-based), "epochs", "train_loss" and "val_accuracy"
# (None without val_data). The progress display of ``sparsesearch run`` draws it.
EPOCH_RECORD = "sparsesearch_epoch"
_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("sparsesearch_train_phase",
                                                             default="trial")


class TrainingError(SparsesearchError):
    """A training setting that cannot work (a device that is not there, a learning rate or
    batch size out of range, empty data): the user's to change, one line (exit 2 from the CLI).
    A :class:`ValueError`, as these checks always were."""


class ModelForwardError(SparsesearchError, RuntimeError):
    """The model's own ``forward`` raised while it trained (an error in the user's model code:
    the traceback ends in their files, not sparsesearch's). One line naming the model, the
    epoch and the batch; the model's exception is the ``__cause__`` (``--debug`` shows it)."""


def _raised_in_our_code(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside sparsesearch's own code (below ``fit``'s call of the
    model): then it is a bug of ours and keeps its traceback."""
    here = os.path.dirname(os.path.abspath(__file__))
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # below fit
    while tb is not None:
        name = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if name.startswith(here + os.sep):
            return True
        tb = tb.tb_next
    return False


def _forward(model: nn.Module, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
    try:
        return model(x)
    except SparsesearchError:
        raise
    except Exception as exc:
        if _raised_in_our_code(exc):
            raise
        raise ModelForwardError(
            f"model {type(model).__name__} failed in forward while training (epoch {epoch}, "
            f"batch {batch}): {type(exc).__name__}: {exc}") from exc


class NonFiniteLossError(SparsesearchError, RuntimeError):
    """The training loss became NaN or infinite (usually: the learning rate is too high): a
    setting to change, so a user error (one line, exit 2 from the CLI)."""


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        epochs_run: completed epochs.
        val_accuracy: validation accuracy after the last epoch (None without ``val_data``).
        history: validation accuracy after each epoch.
        train_loss: mean training loss of the last epoch (None when no epoch ran).
    """

    epochs_run: int
    val_accuracy: float | None
    history: list[float]
    train_loss: float | None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` (CUDA when available, else CPU)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TrainingError(f"device must be 'cpu', 'cuda' or 'auto', got {device=}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise TrainingError(f"device must be 'cpu', 'cuda' or 'auto', got {device=}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"{device=} but CUDA is not available here; use device='cpu' or 'auto'")
    if resolved.type not in ("cpu", "cuda"):
        raise TrainingError(f"device must be 'cpu', 'cuda' or 'auto', got {device=}")
    return resolved


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Inside: torch's global generators (the CPU's, and ``device``'s when it is a GPU) seeded
    with ``seed`` (dropout and the like repeat for the same seed); after: the caller's state,
    as it was."""
    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device`` (``y`` as int64).

    A :class:`TensorSplit` is batched by indexing its tensors with a permutation drawn from
    ``generator`` (no per-sample work); any other torch Dataset goes through a DataLoader
    with ``num_workers=0``. The last batch may be smaller.
    """
    if batch_size < 1:
        raise TrainingError(f"batch_size must be >= 1, got {batch_size=}")
    device = resolve_device(device)
    if isinstance(dataset, TensorSplit):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(dataset.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield dataset.x[idx].to(device), dataset.y[idx].to(device)
        return
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0
    )
    for x, y in loader:
        yield x.to(device), torch.as_tensor(y).to(device=device, dtype=torch.int64)


def _on(dataset: Dataset | None, device: torch.device) -> Dataset | None:
    """Move a TensorSplit to ``device`` once, so batches need no copies."""
    return dataset.to(device) if isinstance(dataset, TensorSplit) else dataset


def _eval_sum(model: nn.Module, dataset: Dataset, batch_size: int, device: str | torch.device,
              per_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """Σ ``per_batch(logits, y)`` over ``dataset`` / its size (eval mode, no grad; mode restored)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise TrainingError("cannot evaluate on an empty dataset")
    device = resolve_device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    try:
        with torch.no_grad():
            for x, y in iterate_batches(_on(dataset, device), batch_size, shuffle=False, device=device):
                total += per_batch(model(x), y).double()
                n += len(y)
    finally:
        model.train(was_training)
    return float(total.item()) / n


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in [0, 1] (eval mode, no grad).

    The model is moved to ``device``; its previous train/eval mode is restored.
    """
    return _eval_sum(model, dataset, batch_size, device, lambda out, y: (out.argmax(dim=1) == y).sum())


def evaluate_loss(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 1024, device: str | torch.device = "cpu",
) -> float:
    """Mean cross-entropy of ``model`` on ``dataset`` (eval mode, no grad; mode restored)."""
    return _eval_sum(model, dataset, batch_size, device,
                     lambda out, y: F.cross_entropy(out, y, reduction="sum"))


def _check_fit_args(
    *, epochs, lr, optimizer, weight_decay, momentum, batch_size, kd_weight, kd_temperature,
    teacher, lr_schedule, train_data,
) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise TrainingError(f"epochs must be an int >= 0, got {epochs=}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise TrainingError(f"lr must be a finite number > 0, got {lr=}")
    if optimizer not in OPTIMIZERS:
        raise TrainingError(f"unknown {optimizer=}; valid: {', '.join(OPTIMIZERS)}")
    if lr_schedule not in LR_SCHEDULES:
        raise TrainingError(f"unknown {lr_schedule=}; valid: {', '.join(LR_SCHEDULES)}")
    if not weight_decay >= 0:
        raise TrainingError(f"weight_decay must be >= 0, got {weight_decay=}")
    if not 0 <= momentum < 1:
        raise TrainingError(f"momentum must be in [0, 1), got {momentum=}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TrainingError(f"batch_size must be an int >= 1, got {batch_size=}")
    if not 0 <= kd_weight <= 1:
        raise TrainingError(f"kd_weight must be in [0, 1], got {kd_weight=}")
    if kd_weight > 0 and teacher is None:
        raise TrainingError(f"{kd_weight=} needs a teacher model")
    if not kd_temperature > 0:
        raise TrainingError(f"kd_temperature must be > 0, got {kd_temperature=}")
    if len(train_data) == 0:
        raise TrainingError("train_data is empty")


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation term: T² · KL(p_teacher,T ‖ p_student,T), batch mean."""
    return F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)


def fit(
    model: nn.Module,
    train_data: Dataset,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    val_data: Dataset | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
    kd_weight: float = 0.0,
    kd_temperature: float = 4.0,
    after_step: Callable[[], None] | None = None,
    lr_schedule: str = "cosine",
    warmup: float = 0.0,
    before_epoch: Callable[[int], "nn.Module | None"] | None = None,
) -> FitResult:
    """Train ``model`` in place with cross-entropy (plus distillation from ``teacher``).

    ``optimizer``: ``"sgd"`` (momentum, not Nesterov) or ``"adamw"``; the learning rate
    follows ``lr_schedule`` per step (``"cosine"`` to zero over all steps, or ``"constant"``),
    after a linear warm-up over the first ``warmup`` share of the steps (0 = none).
    ``before_epoch(epoch)`` runs before each epoch (e.g. to prune gradually within one schedule);
    when it returns a module other than the one being trained, that module is trained from this
    epoch on (a fresh optimizer over its parameters, the learning-rate schedule continuing where
    it was): the engine hands over the compacted model this way.
    With ``kd_weight`` w > 0 the loss is ``(1-w)·CE + w·T²·KL(teacher_T ‖ student_T)``, the
    teacher in eval mode without gradients. ``after_step()`` runs after every optimizer step
    (e.g. to re-apply masks). With ``val_data``, ``on_epoch(epoch, val_accuracy)`` runs after
    each epoch and may raise to stop training; without ``val_data`` it is not called. Deterministic for ``seed`` on CPU; the global
    RNG state is restored afterwards. Raises :class:`NonFiniteLossError` on a NaN/inf loss.
    """
    _check_fit_args(
        epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, momentum=momentum,
        batch_size=batch_size, kd_weight=kd_weight, kd_temperature=kd_temperature,
        teacher=teacher, lr_schedule=lr_schedule, train_data=train_data,
    )
    if not 0.0 <= warmup < 1.0:
        raise TrainingError(f"warmup must be in [0, 1), got {warmup=}")
    device = resolve_device(device)
    model.to(device)
    train_data, val_data = _on(train_data, device), _on(val_data, device)
    distil = teacher is not None and kd_weight > 0
    if distil:
        teacher.to(device)

    def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   nesterov=False)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    opt = make_optimizer(model)
    total_steps = max(1, epochs * math.ceil(len(train_data) / batch_size))
    warm = int(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if lr_schedule == "constant":
            return 1.0
        t = min(step - warm, total_steps - warm) / max(total_steps - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * t))

    step = 0  # optimizer steps taken: the learning rate is lr * factor(step)

    history: list[float] = []
    train_loss: float | None = None
    was_training = model.training
    teacher_was_training = teacher.training if distil else False
    generator = torch.Generator().manual_seed(seed)
    with seeded_rng(seed, device):
        try:
            for epoch in range(epochs):
                if before_epoch is not None:
                    swapped = before_epoch(epoch)
                    if swapped is not None and swapped is not model:
                        # train the returned module from here on (e.g. the compacted model):
                        # a fresh optimizer over its parameters, the schedule where it was
                        model.train(was_training)
                        model = swapped.to(device)
                        was_training = model.training
                        opt = make_optimizer(model)
                model.train()
                if distil:
                    teacher.eval()
                loss_sum = torch.zeros((), device=device)
                seen = 0
                batches = iterate_batches(
                    train_data, batch_size, shuffle=True, generator=generator, device=device
                )
                for batch, (x, y) in enumerate(batches):
                    logits = _forward(model, x, epoch, batch)
                    loss = F.cross_entropy(logits, y)
                    if distil:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                        kd = _kd_loss(logits, teacher_logits, kd_temperature)
                        loss = (1 - kd_weight) * loss + kd_weight * kd
                    if not torch.isfinite(loss):
                        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                            raise NonFiniteLossError(
                                f"loss is {loss.item()} at epoch {epoch}, batch {batch}: the "
                                f"training inputs hold non-finite values (NaN or inf, "
                                f"{int((~torch.isfinite(x)).sum())} in this batch); clean the data"
                            )
                        raise NonFiniteLossError(
                            f"loss is {loss.item()} at epoch {epoch}, batch {batch} "
                            f"({lr=}, {optimizer=}); lower the learning rate"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for group in opt.param_groups:
                        group["lr"] = lr * factor(step)
                    opt.step()
                    step += 1
                    if after_step is not None:
                        after_step()
                    loss_sum += loss.detach() * len(y)
                    seen += len(y)
                train_loss = float(loss_sum.item()) / max(seen, 1)
                acc = evaluate(model, val_data, device=device) if val_data is not None else None
                if _log.isEnabledFor(logging.DEBUG):  # the per-epoch progress (EPOCH_RECORD)
                    _log.debug(
                        "%s epoch %d/%d: train loss %.4f%s", _PHASE.get(), epoch + 1, epochs,
                        train_loss, "" if acc is None else f", val {acc:.4f}",
                        extra={EPOCH_RECORD: {
                            "phase": _PHASE.get(), "model": type(model).__name__,
                            "epoch": epoch + 1, "epochs": epochs, "train_loss": train_loss,
                            "val_accuracy": acc,
                        }},
                    )
                if acc is not None:
                    history.append(acc)
                    if on_epoch is not None:
                        on_epoch(epoch, acc)
        finally:
            model.train(was_training)
            if distil:
                teacher.train(teacher_was_training)
    return FitResult(
        epochs_run=epochs,
        val_accuracy=history[-1] if history else None,
        history=history,
        train_loss=train_loss,
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_dense(
    model: nn.Module,
    splits: Splits,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    weight_decay: float = 0.0,
    cache_path: str | os.PathLike | None = None,
    on_train: Callable[[], None] | None = None,
) -> nn.Module:
    """Train ``model`` densely on ``splits.train`` (in place) and return it.

    With ``cache_path``: when the file exists, its state_dict is loaded (``weights_only``)
    instead of training; otherwise the trained weights are written there atomically. A file
    lock next to it lets concurrent workers train once and share the result. The caller picks
    a path that identifies the model, data and training settings. ``on_train()`` is called
    right before the training itself (in the one worker that trains), e.g. to say so.
    """
    device = resolve_device(device)

    def train() -> nn.Module:
        if on_train is not None:
            on_train()
        phase = _PHASE.set("dense")  # labels fit's per-epoch records (EPOCH_RECORD)
        try:
            fit(
                model, splits.train, epochs=epochs, lr=lr, optimizer=optimizer,
                weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=device,
            )
        finally:
            _PHASE.reset(phase)
        return model

    if cache_path is None:
        return train()
    return locked_cache(cache_path, train, save=lambda m, tmp: torch.save(_cpu_state(m), tmp),
                        load=lambda path: load_checkpoint(model, path).to(device))
