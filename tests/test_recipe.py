"""Replaying recipes: channel strategies train the compacted model (issue 12, item 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsesearch
from sparsesearch.compact import compact
from sparsesearch.layers import find_layers
from sparsesearch.recipe import Recipe, RetrainSettings, replay
from sparsesearch.train import fit


@pytest.fixture(scope="module")
def digits():
    return sparsesearch.load_dataset("digits", seed=0)


def _dense(name: str, splits, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = sparsesearch.build_model(name, num_classes=10, **kwargs)
    fit(model, splits.train, epochs=2, lr=1e-3, optimizer="adamw", seed=0)
    return model


def _recipe(model: nn.Module, amount: float, **retrain) -> Recipe:
    names = [layer.name for layer in find_layers(model)][:-1]  # keep the classifier's outputs
    settings = dict(lr=1e-3, optimizer="adamw", epochs=2, warmup=0.05)
    return Recipe(strategy="l1-filter", granularity="channel", sparsity={n: amount for n in names},
                  retrain=RetrainSettings(**{**settings, **retrain}))


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_a_one_shot_channel_trial_trains_the_compacted_model_to_the_same_function(digits):
    dense = _dense("digits-cnn", digits)
    recipe = _recipe(dense, 0.6)
    small = replay(dense, recipe, digits)
    masked = replay(dense, recipe, digits, compacted=False)
    x = torch.stack([digits.val[i][0] for i in range(32)])
    # the compacted model trained: physically smaller, and trained (not the untrained copy)
    assert small.compacted is not None and masked.compacted is None
    assert _numel(small.compacted) < 0.6 * _numel(dense)
    assert compact(small.model, example_input=x[:2]).params_after == _numel(small.compacted)
    # the returned model is of the original class and shapes, and computes what the small one does
    assert type(small.model) is type(dense)
    assert {k: v.shape for k, v in small.model.state_dict().items()} == \
        {k: v.shape for k, v in masked.model.state_dict().items()}
    torch.testing.assert_close(_out(small.model, x), _out(small.compacted, x), rtol=1e-4, atol=1e-5)
    # one-shot: the same updates on the kept weights as training the masked model
    torch.testing.assert_close(_out(small.model, x), _out(masked.model, x), rtol=1e-3, atol=1e-4)
    assert small.history == pytest.approx(masked.history, abs=2e-3)


def test_the_full_size_copy_holds_zeros_where_channels_were_removed(digits):
    dense = _dense("digits-cnn", digits)
    out = replay(dense, _recipe(dense, 0.6), digits)
    permanent = sparsesearch.make_permanent(out.model)
    nonzero = sum(int((p != 0).sum()) for p in permanent.parameters())
    assert nonzero <= _numel(out.compacted)
    # and it loads into a fresh model of the original class
    fresh = sparsesearch.build_model("digits-cnn", num_classes=10)
    fresh.load_state_dict(permanent.state_dict())


def test_a_residual_model_trains_compacted_with_its_tied_channels(digits):
    dense = _dense("cifar-resnet", digits, in_channels=1, depth=8, width=8)
    recipe = _recipe(dense, 0.5, epochs=1)
    out = replay(dense, recipe, digits)
    x = torch.stack([digits.val[i][0] for i in range(16)])
    assert out.compacted is not None and _numel(out.compacted) < _numel(dense)
    torch.testing.assert_close(_out(out.model, x), _out(out.compacted, x), rtol=1e-4, atol=1e-5)


def test_gradual_pruning_hands_the_compacted_model_over_after_its_last_prune_event(digits):
    dense = _dense("digits-cnn", digits)
    recipe = _recipe(dense, 0.6, epochs=4, prune_steps=2, schedule="gradual")
    seen: list[tuple[int, bool]] = []
    out = replay(dense, recipe, digits, on_masked=lambda m, final: seen.append((_numel(m), final)))
    x = torch.stack([digits.val[i][0] for i in range(32)])
    # the prune events score the full-size masked model; the small one trains after the last
    assert [final for _, final in seen] == [False, True] and seen[0][0] == _numel(dense)
    assert out.compacted is not None and out.epochs == 4 and len(out.history) == 4
    torch.testing.assert_close(_out(out.model, x), _out(out.compacted, x), rtol=1e-4, atol=1e-5)


def test_weight_strategies_train_masked_and_refuse_compacted(digits):
    dense = _dense("digits-cnn", digits)
    names = [layer.name for layer in find_layers(dense)]
    recipe = Recipe(strategy="magnitude", sparsity={n: 0.5 for n in names},
                    retrain=RetrainSettings(epochs=1, lr=1e-3, optimizer="adamw"))
    assert replay(dense, recipe, digits).compacted is None
    with pytest.raises(sparsesearch.SparsesearchError, match="compacted=True needs a channel strategy"):
        replay(dense, recipe, digits, compacted=True)


def test_a_model_fx_cannot_trace_trains_masked(digits):
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
                x = torch.relu(self.conv(x))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    dense = Untraceable()
    recipe = Recipe(strategy="l1-filter", granularity="channel", sparsity={"conv": 0.5},
                    retrain=RetrainSettings(epochs=1, lr=1e-3, optimizer="adamw"))
    out = replay(dense, recipe, digits)
    assert out.compacted is None and out.epochs == 1


def test_a_depthwise_separable_model_trains_compacted(digits):
    def unit(i: int, o: int, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3 if groups > 1 else 1, padding=1 if groups > 1 else 0,
                          groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    torch.manual_seed(0)
    dense = nn.Sequential(*unit(1, 16), *unit(16, 16, groups=16), *unit(16, 24),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24 * 4, 10))
    fit(dense, digits.train, epochs=1, lr=1e-3, optimizer="adamw", seed=0)
    out = replay(dense, _recipe(dense, 0.5, epochs=1), digits)
    x = torch.stack([digits.val[i][0] for i in range(16)])
    assert out.compacted is not None and _numel(out.compacted) < 0.6 * _numel(dense)
    torch.testing.assert_close(_out(out.model, x), _out(out.compacted, x), rtol=1e-4, atol=1e-5)


def test_a_searched_channel_trial_replays_to_the_same_model_on_a_fresh_copy(tmp_path, digits):
    # the dependency groups the search planned with were recorded on its own dense model only;
    # a freshly built model with the same weights (what a user loads to replay a recipe, and
    # what export rebuilds from) must prune the same tied channels, to the same count
    torch.manual_seed(0)
    net = sparsesearch.build_model("cifar-resnet", num_classes=10, in_channels=1, depth=8, width=8)
    r = sparsesearch.search(net, digits, 0.3, strategies="l1-filter", seed=0, runs_dir=tmp_path,
                            study_name="fresh", compute=8, dense={"epochs": 2},
                            space={"epochs": 2}, heuristics=["uniform"])
    trial = r.best_trial
    fresh = sparsesearch.build_model("cifar-resnet", num_classes=10, in_channels=1, depth=8, width=8)
    fresh.load_state_dict(r.dense_model.state_dict())
    x = torch.stack([digits.val[i][0] for i in range(2)])
    for dense in (r.dense_model, fresh):
        model = sparsesearch.apply_recipe(dense, Recipe.from_dict(trial.user_attrs["recipe"]), digits)
        assert compact(model, example_input=x).params_after == trial.user_attrs["params"] <= r.budget_params
