"""``Sparsifier.resume``: building the engine on weights and optimizer state a training stack restored first.

Lightning and the Hugging Face ``Trainer`` load the checkpoint's weights (and
possibly the optimizer state) before the sparsifier can be built. ``resume``
must then continue the run exactly as the uninterrupted one, and a refused
resume must leave every restored value as it was.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import hookimpl
from sparsecore.sparsifier import attached_sparsifier

from core_helpers import mlp

STEPS = 12
STOP = 7


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


class Reinitialise:
    """Overwrites every weight at attach time, as SNIP's variance-scaling option does."""

    name = "reinitialise"

    @hookimpl
    def on_attach(self, sparsifier):
        with torch.no_grad():
            for layer in sparsifier.layers.values():
                layer.weight.fill_(0.25)


def checkpoint_after(steps: int, **kwargs) -> dict:
    model = mlp(0)
    opt = optimizer(model)
    sp = sparsecore.Sparsifier(model, opt, "set", 0.3, total_steps=STEPS, seed=0, update_every=3, **kwargs)
    train(model, opt, range(steps))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "sparsifier": sp.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def restored(checkpoint: dict) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh process's model and optimizer after the training stack loaded the checkpoint (other init)."""
    model = mlp(99)
    opt = optimizer(model)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    return model, opt


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    params = {k: v.clone() for k, v in model.state_dict().items()}
    state = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())}
    return params, state


def assert_unchanged(model: nn.Module, opt: torch.optim.Optimizer, before: tuple[dict, dict]) -> None:
    params, state = before
    for key, value in model.state_dict().items():
        assert torch.equal(value, params[key]), key
    now = {i: s for i, s in enumerate(opt.state.values())}
    assert list(now) == list(state)
    for i, entries in state.items():
        for key, value in entries.items():
            assert torch.equal(now[i][key], value), (i, key)


def test_resume_on_restored_weights_continues_the_run_bit_for_bit():
    straight = mlp(0)
    opt = optimizer(straight)
    sp = sparsecore.Sparsifier(straight, opt, "set", 0.3, total_steps=STEPS, seed=0, update_every=3)
    train(straight, opt, range(STEPS))
    assert len(sp.history) == 3  # updates at steps 3, 6, 9 (none at the final step): the resume crosses one

    checkpoint = checkpoint_after(STOP)
    model, opt = restored(checkpoint)
    before = snapshot(model, opt)
    resumed = sparsecore.Sparsifier.resume(model, opt, checkpoint["sparsifier"], "set", 0.3, total_steps=STEPS,
                                           seed=0, update_every=3)
    assert_unchanged(model, opt, before)  # set-up's fresh masks touched neither weights nor momentum
    assert resumed.step == STOP
    assert {n: torch.equal(layer.mask, checkpoint["sparsifier"]["masks"][n]) for n, layer in resumed.layers.items()} \
        == {n: True for n in resumed.layers}
    train(model, opt, range(STOP, STEPS))
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight.state_dict()[key]), key
    for name, layer in resumed.layers.items():
        assert torch.equal(layer.mask, sp.layers[name].mask), name


def test_resume_keeps_weights_a_plugin_would_reinitialise_at_attach():
    checkpoint = checkpoint_after(STOP, plugins=[Reinitialise()])
    model, opt = restored(checkpoint)
    before = snapshot(model, opt)
    assert not all(torch.all(p == 0.25) for p in model.parameters())
    sparsecore.Sparsifier.resume(model, opt, checkpoint["sparsifier"], "set", 0.3, total_steps=STEPS, seed=0,
                                 update_every=3, plugins=[Reinitialise()])
    assert_unchanged(model, opt, before)


def test_refused_state_leaves_weights_and_optimizer_state_and_detaches():
    checkpoint = checkpoint_after(STOP)
    model, opt = restored(checkpoint)
    before = snapshot(model, opt)
    with pytest.raises(sparsecore.CheckpointError, match="density 0.3, this run uses 0.2"):
        sparsecore.Sparsifier.resume(model, opt, checkpoint["sparsifier"], "set", 0.2, total_steps=STEPS, seed=0,
                                     update_every=3)
    assert_unchanged(model, opt, before)
    assert attached_sparsifier(model) is None and attached_sparsifier(opt) is None
    train(model, opt, range(STOP, STOP + 1))  # no engine hook is left on the optimizer: a dense step
    assert not any(torch.equal(p, before[0][k]) for k, p in model.state_dict().items() if k.endswith("weight"))


def test_refused_set_up_leaves_weights_and_optimizer_state():
    checkpoint = checkpoint_after(STOP)
    model, opt = restored(checkpoint)
    before = snapshot(model, opt)
    with pytest.raises(sparsecore.ConfigurationError, match="update_evry"):
        sparsecore.Sparsifier.resume(model, opt, checkpoint["sparsifier"], "set", 0.3, total_steps=STEPS,
                                     update_evry=3)
    assert_unchanged(model, opt, before)
    assert attached_sparsifier(model) is None
