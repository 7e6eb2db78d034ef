"""The ``module_forwards`` hook: other modules' forwards replaced at commit, restored by remove(), answers checked."""

import pytest
import sparsecore
import torch
from torch import nn


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _doubled(module):
    def forward(x):
        return 2 * type(module).forward(module, x)
    return forward


class Replaces:
    def __init__(self, answer):
        self.answer = answer

    @sparsecore.hookimpl
    def module_forwards(self, sparsifier):
        return self.answer(sparsifier.model) if callable(self.answer) else self.answer


def _build(model, *plugins):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, plugins=list(plugins))


def test_installed_at_commit_and_restored_by_remove():
    model = _model()
    x = torch.randn(3, 4)
    sp = _build(model, Replaces(lambda m: {"1": _doubled(m[1])}))
    assert "forward" in model[1].__dict__
    assert torch.equal(model[1](x), 2 * torch.relu(x))
    sp.remove()
    assert "forward" not in model[1].__dict__
    assert torch.equal(model[1](x), torch.relu(x))


def test_refused_setup_installs_nothing():
    class Refuse:
        @sparsecore.hookimpl
        def on_setup(self, sparsifier):
            raise sparsecore.ConfigurationError("no")

    model = _model()
    with pytest.raises(sparsecore.ConfigurationError, match="no"):
        _build(model, Refuse(), Replaces(lambda m: {"1": _doubled(m[1])}))
    assert "forward" not in model[1].__dict__


@pytest.mark.parametrize("answer, message", [
    ({"9": print}, "names '9', which is no module of the model"),
    ({"0": print}, "names sparse layer '0'; replace a sparse layer's forward with 'layer_forward'"),
    ({"1": 3}, "returned a non-callable for module '1'"),
    ([("1", print)], "returned list, expected a mapping of module name to forward"),
])
def test_bad_answers_name_the_plugin(answer, message):
    model = _model()
    with pytest.raises(sparsecore.HookResultError, match="hook 'module_forwards' of plugin") as info:
        _build(model, Replaces(answer))
    assert message in str(info.value)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_two_plugins_claiming_one_module_is_an_error():
    model = _model()
    with pytest.raises(sparsecore.HookResultError, match="claims module '1', which plugin"):
        _build(model, Replaces({"1": print}), Replaces({"1": print}))
