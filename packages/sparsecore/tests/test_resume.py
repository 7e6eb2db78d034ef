"""A run checkpointed mid-way and resumed equals the uninterrupted run bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import MaskingPolicy, hookimpl, selection

from core_helpers import mlp


class MomentumGrowth:
    """Magnitude prune, |momentum| growth, dense gradients; has state to checkpoint."""

    name = "momentum-growth"

    def __init__(self):
        self.updates = 0

    masking_policy = MaskingPolicy(mask_gradients=False, mask_optimizer_state=False, reset_grown_state=False)

    @hookimpl
    def select_grow(self, sparsifier, layer, n):
        return selection.largest(sparsifier.momentum(layer).abs(), ~layer.mask, n)

    @hookimpl
    def on_step(self, sparsifier, step):
        if step % 3 == 0:
            self.updates += 1
            sparsifier.update_topology(0.3)

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state["updates"]


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def setup(algorithm, seed):
    model = mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    kwargs = {"update_every": 3} if algorithm == "set" else {}
    algo = algorithm if algorithm == "set" else MomentumGrowth()
    sp = sparsecore.Sparsifier(model, opt, algorithm=algo, density=0.3, total_steps=12, seed=seed, **kwargs)
    return model, opt, sched, sp


def run(model, opt, sched, steps):
    for step in steps:
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("algorithm", ["set", "momentum"])
def test_resume_is_bit_exact(algorithm):
    model, opt, sched, sp = setup(algorithm, seed=0)
    run(model, opt, sched, range(12))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    reference_masks = {n: l.mask.clone() for n, l in sp.layers.items()}
    assert len(sp.history) == (3 if algorithm == "set" else 4)  # set skips an update at the final step

    model, opt, sched, sp = setup(algorithm, seed=0)
    run(model, opt, sched, range(7))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "sparsifier": sp.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    # a fresh process: different initial weights and seed, then load
    model, opt, sched, sp = setup(algorithm, seed=99)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    sched.load_state_dict(checkpoint["scheduler"])
    sp.load_state_dict(checkpoint["sparsifier"])
    assert sp.step == 7
    run(model, opt, sched, range(7, 12))
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    for name, layer in sp.layers.items():
        assert torch.equal(layer.mask, reference_masks[name])
    if algorithm == "momentum":
        assert sp.algorithm.updates == 4


def test_checkpoint_of_another_model_is_refused():
    model, opt, sched, sp = setup("set", seed=0)
    state = sp.state_dict()
    other = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    sp2 = sparsecore.Sparsifier(other, torch.optim.SGD(other.parameters(), lr=0.1), algorithm="set",
                                density=0.3, total_steps=12)
    with pytest.raises(sparsecore.CheckpointError, match="differ"):
        sp2.load_state_dict(state)
    model4 = mlp()
    sp4 = sparsecore.Sparsifier(model4, torch.optim.SGD(model4.parameters(), lr=0.1), algorithm="static", density=0.3)
    with pytest.raises(sparsecore.CheckpointError, match="algorithm 'set'"):
        sp4.load_state_dict(state)
