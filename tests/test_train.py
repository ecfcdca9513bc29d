"""sparsesearch.train: batching, evaluation, fit (incl. distillation) and the dense cache."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sparsesearch
import sparsesearch.train as train_mod
from sparsesearch.data import Splits, TensorSplit, load_dataset
from sparsesearch.models import ModelError, build_model
from sparsesearch.train import (
    FitResult,
    NonFiniteLossError,
    _kd_loss,
    evaluate,
    fit,
    iterate_batches,
    resolve_device,
    train_dense,
)


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_dataset("digits", seed=0)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("digits-mlp")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- batching and evaluation -----------------------------------------------------------------


def test_iterate_batches_tensor_split_covers_every_sample_once():
    data = TensorSplit(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    batches = list(iterate_batches(data, 4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(10)) and ys.tolist() != list(range(10))
    assert all(torch.equal(x[:, 0].long(), y) for x, y in batches)  # rows stay paired
    again = list(iterate_batches(data, 4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(torch.cat([y for _, y in again]), ys)
    in_order = torch.cat([y for _, y in iterate_batches(data, 3, shuffle=False)])
    assert in_order.tolist() == list(range(10))


def test_iterate_batches_generic_dataset_fallback():
    data = TensorDataset(torch.arange(7.0).reshape(7, 1), torch.arange(7, dtype=torch.int32))
    batches = list(iterate_batches(data, 3, shuffle=False, generator=None))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert all(y.dtype == torch.int64 for _, y in batches)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(7))


def test_evaluate_accuracy_and_mode_restored():
    class Constant(nn.Module):  # always predicts class 1
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3) + 0 * self.p

    y = torch.tensor([1, 1, 0, 2, 1])
    data = TensorSplit(torch.zeros(5, 2), y)
    model = Constant().train()
    assert evaluate(model, data, batch_size=2) == pytest.approx(3 / 5)
    assert model.training
    model.eval()
    evaluate(model, data)
    assert not model.training
    generic = TensorDataset(torch.zeros(5, 2), y)
    assert evaluate(model, generic) == pytest.approx(3 / 5)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# --- fit -------------------------------------------------------------------------------------


def test_fit_learns_digits(digits):
    model = _model()
    assert evaluate(model, digits.val) < 0.5
    result = fit(model, digits.train, epochs=5, lr=0.1, batch_size=64, val_data=digits.val)
    assert isinstance(result, FitResult)
    assert result.epochs_run == 5 and len(result.history) == 5
    assert result.val_accuracy == result.history[-1] > 0.85
    assert evaluate(model, digits.test) > 0.85
    assert result.train_loss is not None and result.train_loss < 0.5


def test_fit_adamw_constant_schedule_learns(digits):
    model = _model()
    result = fit(
        model, digits.train, epochs=3, lr=0.01, optimizer="adamw", lr_schedule="constant",
        val_data=digits.val, batch_size=64,
    )
    assert result.val_accuracy > 0.85


def test_fit_is_deterministic_for_a_seed(digits):
    kwargs = dict(epochs=2, lr=0.05, batch_size=64, seed=3)
    a, b, c = _model(), _model(), _model()
    ra = fit(a, digits.train, **kwargs)
    rb = fit(b, digits.train, **kwargs)
    fit(c, digits.train, **{**kwargs, "seed": 4})
    assert _same_weights(a, b) and ra.train_loss == rb.train_loss
    assert not _same_weights(a, c)


def test_fit_leaves_the_global_rng_alone(digits):
    state = torch.get_rng_state()
    fit(_model(), digits.train, epochs=1, lr=0.05, seed=9)
    assert torch.equal(torch.get_rng_state(), state)


def test_nan_loss_raises_with_epoch_and_batch(digits):
    class NaNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    with pytest.raises(NonFiniteLossError, match="epoch 0, batch 0"):
        fit(NaNModel(), digits.train, epochs=1, lr=0.1)


def test_exploding_lr_raises(digits):
    with pytest.raises(NonFiniteLossError, match="lr=1e\\+30"):
        fit(_model(), digits.train, epochs=3, lr=1e30)


def test_nan_in_the_inputs_is_named_not_the_learning_rate():
    # a generic Dataset (not an in-memory split, which is checked when it is loaded)
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            x = torch.ones(64)
            if i == 5:
                x[0] = float("nan")
            return x, i % 10

    with pytest.raises(NonFiniteLossError, match="the training inputs hold non-finite values"):
        fit(_model(), Rows(), epochs=1, lr=0.01, batch_size=64)


def test_a_models_own_forward_raising_in_training_is_named_as_the_models(digits):
    class TrainBroken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            if self.training:
                raise ValueError("broken in train mode")
            return self.fc(x.flatten(1))

    with pytest.raises(train_mod.ModelForwardError) as err:
        fit(TrainBroken(), digits.train, epochs=1, lr=0.01)
    assert str(err.value) == ("model TrainBroken failed in forward while training (epoch 0, batch 0): "
                              "ValueError: broken in train mode")
    assert isinstance(err.value.__cause__, ValueError)
    assert isinstance(err.value, sparsesearch.errors.SparsesearchError)


def test_on_epoch_called_once_per_epoch(digits):
    calls = []
    result = fit(
        _model(), digits.train, epochs=3, lr=0.05, batch_size=256, val_data=digits.val,
        on_epoch=lambda epoch, acc: calls.append((epoch, acc)),
    )
    assert [e for e, _ in calls] == [0, 1, 2]
    assert all(isinstance(acc, float) and 0 <= acc <= 1 for _, acc in calls)
    assert [acc for _, acc in calls] == result.history


def test_on_epoch_may_stop_training(digits):
    class Stop(Exception):
        pass

    calls = []

    def on_epoch(epoch, acc):
        calls.append(epoch)
        if epoch == 1:
            raise Stop

    model = _model().eval()
    with pytest.raises(Stop):
        fit(model, digits.train, epochs=5, lr=0.05, val_data=digits.val, on_epoch=on_epoch)
    assert calls == [0, 1]
    assert not model.training  # the previous mode is restored even when stopped


def test_on_epoch_without_val_data_is_not_called(digits):
    calls = []
    result = fit(_model(), digits.train, epochs=1, lr=0.05, on_epoch=lambda *a: calls.append(a))
    assert calls == [] and result.val_accuracy is None and result.history == []


def test_after_step_runs_after_every_step(digits):
    steps = []
    fit(_model(), digits.train, epochs=2, lr=0.05, batch_size=100, after_step=lambda: steps.append(1))
    assert len(steps) == 2 * math.ceil(len(digits.train) / 100)


def test_after_step_can_hold_weights_at_zero(digits):
    model = _model()
    first = model[1]

    def mask():
        with torch.no_grad():
            first.weight[:, :10] = 0

    mask()
    fit(model, digits.train, epochs=1, lr=0.05, after_step=mask)
    assert (first.weight[:, :10] == 0).all()


def test_knowledge_distillation_changes_the_loss_and_spares_the_teacher(digits):
    teacher = _model(seed=1)
    fit(teacher, digits.train, epochs=2, lr=0.1, batch_size=64)
    teacher.train()
    frozen = copy.deepcopy(teacher)
    modes = []
    teacher.register_forward_hook(lambda m, i, o: modes.append(m.training))

    plain = fit(_model(), digits.train, epochs=3, lr=0.1, batch_size=64, seed=0)
    distilled_model = _model()
    distilled = fit(
        distilled_model, digits.train, epochs=3, lr=0.1, batch_size=64, seed=0,
        teacher=teacher, kd_weight=0.7, kd_temperature=2.0, val_data=digits.val,
    )
    assert distilled.train_loss != pytest.approx(plain.train_loss)
    assert modes and not any(modes)  # the teacher ran in eval mode
    assert teacher.training  # ... and got its mode back
    assert _same_weights(teacher, frozen)  # and was not trained
    assert distilled.val_accuracy > 0.8


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(6, 10)
    assert _kd_loss(logits, logits, 4.0).abs() < 1e-6
    assert _kd_loss(logits, torch.randn(6, 10), 4.0) > 0


def test_zero_epochs_is_a_no_op(digits):
    model = _model()
    before = copy.deepcopy(model)
    assert fit(model, digits.train, epochs=0, lr=0.1) == FitResult(0, None, [], None)
    assert _same_weights(model, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0}, "lr=0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"epochs": -1}, "epochs=-1"),
        ({"optimizer": "adam"}, "valid: sgd, adamw"),
        ({"lr_schedule": "step"}, "valid: cosine, constant"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"kd_weight": 0.5}, "needs a teacher"),
        ({"kd_weight": 1.5, "teacher": nn.Identity()}, "kd_weight=1.5"),
        ({"momentum": 1.0}, "momentum=1.0"),
    ],
)
def test_fit_validates_arguments_early(digits, kwargs, match):
    model = _model()
    before = copy.deepcopy(model)
    args = {"epochs": 1, "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit(model, digits.train, **args)
    assert _same_weights(model, before)


# --- train_dense -----------------------------------------------------------------------------


def test_train_dense_caches_the_trained_weights(digits, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "dense.pt"
    model = _model(seed=0)
    initial = copy.deepcopy(model)
    trained = train_dense(model, digits, epochs=1, lr=0.05, batch_size=64, seed=0, cache_path=cache)
    assert trained is model and not _same_weights(model, initial)
    assert cache.is_file()
    assert sorted(p.name for p in cache.parent.iterdir() if not p.name.endswith(".lock")) == ["dense.pt"]

    def no_training(*args, **kwargs):
        raise AssertionError("fit must not run when the cache exists")

    monkeypatch.setattr(train_mod, "fit", no_training)
    fresh = _model(seed=5)
    loaded = train_dense(fresh, digits, epochs=1, lr=0.05, batch_size=64, seed=0, cache_path=cache)
    assert loaded is fresh and _same_weights(fresh, model)


def test_train_dense_without_cache_trains(digits):
    model = _model()
    train_dense(model, digits, epochs=2, lr=0.1, batch_size=64)
    assert evaluate(model, digits.val) > 0.8


def test_train_dense_cache_of_another_model_is_a_clear_error(digits, tmp_path):
    cache = tmp_path / "dense.pt"
    torch.save(build_model("digits-cnn").state_dict(), cache)
    with pytest.raises(ModelError, match="does not fit"):
        train_dense(_model(), digits, epochs=1, lr=0.1, cache_path=cache)
