"""Faults around the engine: refused set-ups change nothing, bad input is refused cleanly, autocast works.

These cover every algorithm of this repository; each one is a dependency of the test environment, so a missing
one is an error, not a skip.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparsecore
from sparsecore.sparsifier import attached_sparsifier

from core_helpers import mlp, train_steps


def digest(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """sha256 over the model's state dict, the optimizer's state and param groups, and the modules' forwards."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    for param, state in optimizer.state.items():
        for key, value in sorted(state.items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes() if torch.is_tensor(value)
                     else repr(value).encode())
    for group in optimizer.param_groups:
        h.update(repr({k: v for k, v in group.items() if k != "params"}).encode())
    h.update(repr(sorted(len(opt_hooks) for opt_hooks in (optimizer._optimizer_step_pre_hooks,
                                                          optimizer._optimizer_step_post_hooks))).encode())
    for name, module in model.named_modules():
        h.update(f"{name}:{'forward' in module.__dict__}:{len(module._forward_hooks)}".encode())
    return h.hexdigest()


def trained_mlp() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model with momentum buffers already in its optimizer (so a refused set-up could damage both)."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, optimizer, 2)
    return model, optimizer


class RefuseInSetup:
    """A plugin that refuses every run in ``on_setup``."""

    @sparsecore.hookimpl
    def on_setup(self, sparsifier):
        raise RuntimeError("refused by the plugin")


REFUSED_SETUPS = [
    pytest.param(dict(algorithm="sparse-momentum", density=0.05), sparsecore.ConfigurationError, "total_steps",
                 id="sparse-momentum-without-total-steps"),
    pytest.param(dict(algorithm="dsd", density=0.5), sparsecore.ConfigurationError, "total_steps",
                 id="dsd-fractions-without-total-steps"),
    pytest.param(dict(algorithm="snip", density=0.05), sparsecore.ConfigurationError, "needs data",
                 id="snip-without-data"),
    pytest.param(dict(algorithm="swat", density=0.2, variant="momentum", total_steps=10, momentum_zero=True),
                 sparsecore.ConfigurationError, "momentum", id="swat-m-without-momentum"),
    pytest.param(dict(algorithm="static", density=0.25, plugins=[RefuseInSetup()]), RuntimeError,
                 "refused by the plugin", id="static-plugin-raises-in-on-setup"),
    pytest.param(dict(algorithm="set", density=0.25, total_steps=10, plugins=[RefuseInSetup()]), RuntimeError,
                 "refused by the plugin", id="set-plugin-raises-in-on-setup"),
    pytest.param(dict(algorithm="sparse-momentum", density=0.05, total_steps=10, plugins=[RefuseInSetup()]),
                 RuntimeError, "refused by the plugin", id="sparse-momentum-plugin-raises-in-on-setup"),
    pytest.param(dict(algorithm="set", density=0.25, block=(3, 3)), sparsecore.ConfigurationError,
                 "not divisible", id="set-block-does-not-divide"),
]


@pytest.mark.parametrize(("options", "error", "match"), REFUSED_SETUPS)
def test_a_refused_setup_leaves_model_and_optimizer_exactly_as_they_were(options, error, match):
    model, optimizer = trained_mlp()
    if options.pop("momentum_zero", False):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
        train_steps(model, optimizer, 1)
    before = digest(model, optimizer)
    with pytest.raises(error, match=match):
        sparsecore.Sparsifier(model, optimizer, **options)
    assert digest(model, optimizer) == before
    assert attached_sparsifier(model) is None and attached_sparsifier(optimizer) is None
    sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.5)  # the model is free for another run


def test_meta_device_model_is_refused_with_the_fix():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match=r"meta device.*to_empty"):
        sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.5)


@pytest.mark.parametrize("algorithm, options", [
    ("static", {}),
    ("set", {"update_every": 2}),
    ("sparse-momentum", {"update_every": 2}),
    ("dsd", {"phases": (0.25, 0.5, 0.25)}),
    ("snip", {}),
    ("swat", {}),
])
def test_every_algorithm_trains_under_cpu_bf16_autocast(algorithm, options):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(8)]
    sp = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, density=0.5, total_steps=len(batches),
                               seed=0, data=batches, **options)
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(float(loss.detach()))
    assert sp.step == len(batches)
    if sp.policy.mask_weights:
        for layer in sp.layers.values():
            assert not bool(layer.weight[~layer.mask].any()), f"{algorithm}: an inactive weight of {layer.name} is not 0"


class Fault(Exception):
    """Raised by the broken plugins below."""


def _raising(hook: str):
    def method(self, *args, **kwargs):
        raise Fault(f"{hook} broke")
    method.__name__ = hook
    return type(f"Broken_{hook}", (), {hook: sparsecore.hookimpl(method), "name": f"broken-{hook}"})()


@pytest.mark.parametrize("hook", ["plan_update", "select_prune", "redistribute", "select_grow"])
def test_a_plugin_failing_inside_an_update_leaves_the_previous_masks_in_force(hook):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, optimizer, algorithm="set", density=0.5, total_steps=10, seed=0,
                               plugins=[_raising(hook)])
    train_steps(model, optimizer, 2)
    masks = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    weights = {name: layer.weight.detach().clone() for name, layer in sp.layers.items()}
    with pytest.raises(Fault, match=f"{hook} broke"):
        sp.update_topology(0.3)
    for name, layer in sp.layers.items():
        assert torch.equal(layer.mask, masks[name]) and torch.equal(layer.weight.detach(), weights[name])
    assert sp.history == []


@pytest.mark.parametrize("hook", ["before_optimizer_step", "on_step", "on_epoch_end", "on_topology_update"])
def test_a_plugin_failing_in_a_broadcast_hook_names_itself_and_the_masks_hold(hook):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, optimizer, algorithm="set", density=0.5, total_steps=10, seed=0,
                               plugins=[_raising(hook)])
    with pytest.raises(Fault, match=f"{hook} broke"):
        train_steps(model, optimizer, 2)
        sp.epoch_end(0)
        sp.update_topology(0.3)
    for layer in sp.layers.values():
        assert not bool(layer.weight[~layer.mask].any())


@pytest.mark.parametrize("hook", ["init_masks", "layer_forward", "on_setup"])
def test_a_plugin_failing_during_setup_changes_nothing(hook):
    model, optimizer = trained_mlp()
    before = digest(model, optimizer)
    with pytest.raises(Fault, match=f"{hook} broke"):
        sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.5, plugins=[_raising(hook)])
    assert digest(model, optimizer) == before


bad_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda d: not 0 < d <= 1),
                        st.booleans(), st.text(max_size=3), st.none().map(lambda _: [0.5]),
                        st.integers().filter(lambda d: d != 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(density=bad_numbers)
def test_any_bad_density_is_a_configuration_error_and_changes_nothing(density):
    model, optimizer = trained_mlp()
    before = digest(model, optimizer)
    with pytest.raises(sparsecore.ConfigurationError, match="density"):
        sparsecore.Sparsifier(model, optimizer, algorithm="static", density=density)
    assert digest(model, optimizer) == before


@settings(max_examples=40, deadline=None)
@given(total_steps=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=2)),
       block=st.one_of(st.none(), st.tuples(st.integers(-2, 0), st.integers(1, 4)), st.just("2x2"),
                       st.tuples(st.integers(1, 2))))
def test_bad_total_steps_or_block_is_a_configuration_error(total_steps, block):
    model, optimizer = trained_mlp()
    before = digest(model, optimizer)
    with pytest.raises(sparsecore.ConfigurationError):
        sparsecore.Sparsifier(model, optimizer, algorithm="set", density=0.5, total_steps=total_steps,
                              block=block if block is not None else (0, 1))
    assert digest(model, optimizer) == before


def test_modules_left_dense_by_type_are_reported_with_a_warning():
    model = nn.ModuleDict({"embed": nn.Embedding(10, 8), "rnn": nn.LSTM(8, 8), "up": nn.ConvTranspose2d(2, 2, 3),
                           "head": nn.Linear(8, 4)})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"stay dense:.*'embed': embeddings stay dense by default.*'rnn': recurrent"):
        sp = sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.5)
    assert list(sp.layers) == ["head"]
    assert set(sp.dense_layers) == {"embed", "rnn", "up"}
    assert "opt in with layer_types" in sp.report().dense_layers["up"]
    assert "`rnn` stays dense" in sp.report().table()
    sp.remove()
    opted = sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.5,
                                  layer_types=[nn.Linear, nn.Embedding, nn.ConvTranspose2d])
    assert list(opted.layers) == ["embed", "up", "head"] and opted.layers["embed"].kind == "embedding"
