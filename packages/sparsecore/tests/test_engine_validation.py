"""Engine input checks: layer selection edge cases, plugin answers at set-up, checkpoint compatibility."""

from __future__ import annotations

import io
from collections import OrderedDict

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore.algorithms import SetAlgorithm

from core_helpers import mlp


def build(model=None, **kw):
    """A sparsifier on ``model`` (a fresh MLP by default); one already attached to ``model`` is removed first."""
    model = model or mlp()
    attached = sparsecore.sparsifier.attached_sparsifier(model)
    if attached is not None:
        attached.remove()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, **kw)


# -- layer selection -----------------------------------------------------------
def test_a_single_string_is_one_pattern():
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(), fc2=nn.Linear(8, 8), out=nn.Linear(8, 2)))
    assert list(build(model, algorithm="static", exclude="fc2").layers) == ["fc1", "out"]
    assert list(build(model, algorithm="static", include="fc*").layers) == ["fc1", "fc2"]


def test_patterns_must_be_strings():
    with pytest.raises(sparsecore.ConfigurationError, match=r"exclude must be glob patterns \(strings\), got \[2\]"):
        build(algorithm="static", exclude=["0", 2])


def test_a_single_plugin_name_or_object_is_one_plugin():
    class Probe:
        @sparsecore.hookimpl
        def on_step(self, sparsifier, step):
            pass

    probe = Probe()
    sp = build(algorithm="static", plugins=probe)
    assert sp.plugins == [probe]


def test_tied_weight_is_one_sparse_layer_with_one_mask():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8, bias=False)
            self.b = nn.Linear(8, 8, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = Tied()
    sp = build(model, algorithm="static", density=0.5)
    assert list(sp.layers) == ["a"]
    assert sp.nnz == 32 == int((model.a.weight != 0).sum())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_empty_weight_is_not_a_sparse_layer():
    model = nn.Sequential(nn.Linear(0, 5), nn.Linear(5, 3))
    sp = build(model, algorithm="static", density=0.4)
    assert list(sp.layers) == ["1"]
    assert sp.nnz == 6


def test_layer_left_without_weights_at_init_warns():
    model = nn.Sequential(nn.Linear(1000, 4), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"sparse layer\(s\) \['1'\] start with no active weight"):
        sp = build(model, algorithm="static", density=1e-3)
    assert sp.layers["1"].nnz == 0 and sp.layers["0"].nnz == 4


# -- plain-type checks ---------------------------------------------------------
@pytest.mark.parametrize("density", ["0.5", True])
def test_density_must_be_a_number(density):
    with pytest.raises(sparsecore.ConfigurationError, match=r"density must be a number in \(0, 1\]"):
        build(algorithm="static", density=density)


def test_total_steps_true_is_refused():
    with pytest.raises(sparsecore.ConfigurationError, match="total_steps must be a positive int or None, got True"):
        build(algorithm="static", total_steps=True)


def test_a_bool_tensor_is_not_a_count():
    class BoolCounts:
        @sparsecore.hookimpl
        def redistribute(self, sparsifier, layers, removed):
            return {name: torch.tensor(True) for name in layers}

    sp = build(algorithm="set", density=0.5, total_steps=10, plugins=[BoolCounts()])
    with pytest.raises(sparsecore.HookResultError, match=r"redistribute.*count must be an int"):
        sp.update_topology(0.5)


# -- engine_defaults -----------------------------------------------------------
class _Defaults(sparsecore.Algorithm):
    name = "with-defaults"

    def __init__(self, answer):
        self.engine_defaults = answer


def test_engine_defaults_error_names_the_algorithm_and_the_key():
    with pytest.raises(sparsecore.ConfigurationError) as info:
        build(algorithm=_Defaults({"distribtion": "erk"}))
    message = str(info.value)
    assert "engine_defaults" in message and "'with-defaults'" in message and "['distribtion']" in message


def test_engine_defaults_must_be_a_mapping():
    with pytest.raises(sparsecore.ConfigurationError, match=r"'with-defaults'.*engine_defaults must be a mapping, got int"):
        build(algorithm=_Defaults(3))


def test_old_hook_forms_of_configuration_are_refused_with_a_hint():
    class OldStyle:
        @sparsecore.hookimpl
        def engine_defaults(self):
            return {"density": 0.5}

    with pytest.raises(sparsecore.ConfigurationError, match="engine_defaults"):
        build(algorithm="static", plugins=[OldStyle()])


# -- one algorithm per run -----------------------------------------------------
def test_a_second_algorithm_among_the_plugins_is_refused():
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"instance of algorithm 'set' while the run's algorithm is 'static'"):
        build(algorithm="static", plugins=[SetAlgorithm()])


# -- checkpoints -----------------------------------------------------------------
def _saved(sp) -> dict:
    buffer = io.BytesIO()
    torch.save(sp.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoint_of_another_density_is_refused():
    state = _saved(build(algorithm="static", density=0.5, seed=0))
    target = build(algorithm="static", density=0.1, seed=0)
    masks_before = {n: l.mask.clone() for n, l in target.layers.items()}
    with pytest.raises(sparsecore.CheckpointError, match="checkpoint is of density 0.5, this run uses 0.1"):
        target.load_state_dict(state)
    assert all(torch.equal(masks_before[n], l.mask) for n, l in target.layers.items())


def test_checkpoint_of_another_block_size_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    state = _saved(build(model, algorithm="static", density=0.5, block=(4, 4), seed=0))
    with pytest.raises(sparsecore.CheckpointError, match=r"checkpoint has block=\(4, 4\), this run uses block=None"):
        build(model, algorithm="static", density=0.5, seed=0).load_state_dict(state)


def test_checkpoint_with_non_bool_masks_is_refused():
    state = _saved(build(algorithm="static", density=0.5, seed=0))
    state["masks"] = {n: m.float() for n, m in state["masks"].items()}
    with pytest.raises(sparsecore.CheckpointError, match="dtype torch.float32, expected torch.bool"):
        build(algorithm="static", density=0.5, seed=0).load_state_dict(state)


def test_a_failed_setup_leaves_the_optimizer_and_model_untouched():
    class RefuseSetup:
        @sparsecore.hookimpl
        def layer_forward(self, sparsifier, layer):
            return lambda x: layer.module.__class__.forward(layer.module, x)

        @sparsecore.hookimpl
        def on_setup(self, sparsifier):
            raise sparsecore.ConfigurationError("refused")

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pre, post = dict(opt._optimizer_step_pre_hooks), dict(opt._optimizer_step_post_hooks)
    with pytest.raises(sparsecore.ConfigurationError, match="refused"):
        sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, plugins=[RefuseSetup()])
    assert dict(opt._optimizer_step_pre_hooks) == pre and dict(opt._optimizer_step_post_hooks) == post
    assert all("forward" not in m.__dict__ for m in model.modules())


# -- algorithm defaults and detaching --------------------------------------------
def test_density_comes_from_the_algorithm_when_not_given():
    sp = build(algorithm=_Defaults({"density": 0.25}))
    assert sp.density == 0.25 and sp.nnz == round(0.25 * 512) + round(0.25 * 768) + round(0.25 * 96)
    assert build(algorithm=_Defaults({"density": 0.25}), density=0.5).density == 0.5
    assert build(algorithm="static").density == 0.05


def test_a_second_sparsifier_on_the_same_model_or_optimizer_is_refused_until_remove():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.25, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sparsecore.ConfigurationError, match=r"already has a sparsifier attached.*remove\(\)"):
        sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, seed=1)
    other_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match="this model already has a sparsifier"):
        sparsecore.Sparsifier(model, other_opt, algorithm="static", density=0.5, seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(opt._optimizer_step_post_hooks) == 1
    first.remove()
    second = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, seed=1)
    assert len(opt._optimizer_step_post_hooks) == 1 and second.density == 0.5
