"""sparsesearch.models: zoo, torchvision, module:function, plugins and checkpoints."""

from __future__ import annotations

import os
import pickle
import sys
import textwrap

import pluggy
import pytest
import torch
from torch import nn

from sparsesearch import hookspecs
from sparsesearch.errors import PluginError
from sparsesearch.models import ModelError, build_model, example_input, list_models, load_checkpoint

ZOO = {
    "lenet300": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "digits-mlp": (1, 8, 8),
    "digits-cnn": (1, 8, 8),
    "cifar-resnet": (3, 32, 32),
}


@pytest.fixture
def bare_pm(monkeypatch):
    """A plugin manager with only sparsesearch's hookspecs, used in place of the global one."""
    import sparsesearch.plugins

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    monkeypatch.setattr(sparsesearch.plugins, "get_plugin_manager", lambda: pm)
    return pm


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("num_classes", [10, 7])
def test_zoo_forward_shape(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes)
    out = model(example_input(ZOO[name], batch=3))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()


def test_lenet_architectures_match_the_papers():
    assert sum(p.numel() for p in build_model("lenet300").parameters()) == 266_610
    assert sum(p.numel() for p in build_model("lenet5").parameters()) == 431_080
    convs = [m for m in build_model("lenet5").modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]


def test_cifar_resnet_is_a_resnet20_with_batchnorm():
    model = build_model("cifar-resnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # plus the fc layer: 20 weighted layers
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert {c.out_channels for c in convs} == {16, 32, 64}
    wide = build_model("cifar-resnet", width=8, depth=14)
    assert {m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)} == {8, 16, 32}
    assert wide(example_input((3, 32, 32))).shape == (2, 10)
    with pytest.raises(ModelError, match="6n\\+2"):
        build_model("cifar-resnet", depth=21)


def test_input_shape_and_channels_adapt_the_zoo():
    assert build_model("lenet300", input_shape=(1, 8, 8))(example_input((1, 8, 8))).shape == (2, 10)
    assert build_model("digits-cnn", input_shape=(3, 8, 8))(example_input((3, 8, 8))).shape == (2, 10)
    assert build_model("cifar-resnet", in_channels=1)(example_input((1, 32, 32))).shape == (2, 10)
    assert build_model("lenet5", input_shape=(3, 32, 32))(example_input((3, 32, 32))).shape == (2, 10)
    with pytest.raises(ModelError, match="at least 16"):
        build_model("lenet5", input_shape=(1, 8, 8))


def test_torchvision_model_builds_without_weights():
    model = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert model.fc.out_features == 10
    assert model(example_input((3, 32, 32))).shape == (2, 10)


def test_pretrained_weights_are_refused():
    with pytest.raises(ModelError, match="offline"):
        build_model("resnet18", weights="DEFAULT")
    build_model("digits-mlp", weights=None)  # an explicit None is fine


def test_unknown_model_suggests_the_closest(bare_pm):
    with pytest.raises(ModelError) as info:
        build_model("lenet-5")
    message = str(info.value)
    assert "did you mean lenet5" in message and "\n" not in message
    assert "digits-mlp" in message  # the zoo is listed
    with pytest.raises(ModelError, match="did you mean resnet18"):
        build_model("resnet-18")


def test_bad_kwargs_are_a_model_error():
    with pytest.raises(ModelError, match="rejected its arguments"):
        build_model("digits-mlp", colour=3)


def test_list_models(bare_pm):
    assert set(ZOO) <= set(list_models())


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_toy_models.py").write_text(textwrap.dedent(
        """
        from torch import nn

        def shaped(*, input_shape, num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], num_classes))

        def plain(num_classes=10):
            return nn.Linear(4, num_classes)

        def not_a_model():
            return 42
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_toy_models", raising=False)


def test_module_function_models(user_module):
    model = build_model("my_toy_models:shaped", input_shape=(2, 3), num_classes=4)
    assert model(torch.zeros(5, 2, 3)).shape == (5, 4)
    # input_shape is only passed to factories that accept it
    assert build_model("my_toy_models:plain", input_shape=(4,), num_classes=3).out_features == 3
    with pytest.raises(ModelError, match="not an nn.Module"):
        build_model("my_toy_models:not_a_model")
    with pytest.raises(ModelError, match="cannot import 'nope_not_here'"):
        build_model("nope_not_here:f")


def test_plugin_registered_model(bare_pm):
    class Plugin:
        @hookspecs.hookimpl
        def sparsesearch_register_models(self, register):
            register("tiny", lambda num_classes=10: nn.Linear(3, num_classes))

    bare_pm.register(Plugin(), name="tiny-plugin")
    assert "tiny" in list_models()
    assert build_model("tiny", num_classes=5).out_features == 5

    class Shadow:
        @hookspecs.hookimpl
        def sparsesearch_register_models(self, register):
            register("lenet5", lambda: nn.Linear(1, 1))

    bare_pm.register(Shadow(), name="shadow")
    with pytest.raises(PluginError, match="'shadow' registered model 'lenet5'"):
        list_models()


# --- checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module-prefix"])
def test_checkpoint_round_trip(tmp_path, wrap):
    torch.manual_seed(0)
    source = build_model("digits-cnn")
    state = source.state_dict()
    payload = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "module-prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    torch.manual_seed(1)
    target = build_model("digits-cnn")
    assert not torch.equal(target.classifier[1].weight, source.classifier[1].weight)
    assert load_checkpoint(target, path) is target
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


class _Evil:
    """Unpickling this would create a directory: the weights_only loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": build_model("digits-mlp").state_dict(), "x": _Evil(str(marker))}, path)
    with pytest.raises(ModelError, match="weights_only=True") as info:
        load_checkpoint(build_model("digits-mlp"), path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    with pytest.raises(ModelError):
        load_checkpoint(build_model("digits-mlp"), plain)
    assert not marker.exists()


def test_checkpoint_that_does_not_fit(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(build_model("digits-mlp").state_dict(), path)
    with pytest.raises(ModelError, match="missing: ") as info:
        load_checkpoint(build_model("digits-cnn"), path)
    assert "\n" not in str(info.value) and "unexpected: " in str(info.value)
    torch.save(build_model("digits-mlp", num_classes=3).state_dict(), path)
    with pytest.raises(ModelError, match=r"wrong shape: 5.bias \[3\] vs model \[10\]"):
        load_checkpoint(build_model("digits-mlp"), path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(ModelError, match="holds no state_dict"):
        load_checkpoint(build_model("digits-mlp"), path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(build_model("digits-mlp"), tmp_path / "nope.pt")


def test_example_input_is_seeded():
    a = example_input((1, 8, 8), batch=4)
    assert a.shape == (4, 1, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, example_input((1, 8, 8), batch=4))
    assert not torch.equal(a, example_input((1, 8, 8), batch=4, seed=1))
