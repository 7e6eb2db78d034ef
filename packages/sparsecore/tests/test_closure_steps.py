"""``optimizer.step(closure)``: the engine's gradient work runs after the closure computed the gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore


class GradientSeen:
    """Records the gradient norm of every sparse layer that ``before_optimizer_step`` sees."""

    def __init__(self):
        self.seen = []

    @sparsecore.hookimpl
    def before_optimizer_step(self, sparsifier, step):
        self.seen.append({name: (None if layer.weight.grad is None else float(layer.weight.grad.norm()))
                          for name, layer in sparsifier.layers.items()})


def _run(algorithm, use_closure, steps=6, optimizer="sgd", plugins=()):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.01))
    sp = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, total_steps=steps, seed=0,
                               dense_first_layer=False, dense_last_layer=False, plugins=list(plugins),
                               **({"update_every": 2} if algorithm in ("set", "rigl") else {}))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 12, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        if use_closure:
            def closure():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
        else:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model, sp


@pytest.mark.parametrize("algorithm", ["set", "rigl", "static"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_closure_step_trains_exactly_like_backward_then_step(algorithm, optimizer):
    plain, sp_plain = _run(algorithm, use_closure=False, optimizer=optimizer)
    closed, sp_closed = _run(algorithm, use_closure=True, optimizer=optimizer)
    for name in sp_plain.layers:
        assert torch.equal(sp_plain.layers[name].mask, sp_closed.layers[name].mask), name
    for a, b in zip(plain.parameters(), closed.parameters()):
        assert torch.equal(a, b)


def test_before_optimizer_step_sees_the_gradient_the_closure_computed():
    seen_plain, seen_closure = GradientSeen(), GradientSeen()
    _run("static", use_closure=False, plugins=[seen_plain])
    _run("static", use_closure=True, plugins=[seen_closure])
    assert len(seen_closure.seen) == 6
    assert all(norm is not None and norm > 0 for step in seen_closure.seen for norm in step.values())
    assert seen_closure.seen == seen_plain.seen


@pytest.mark.parametrize("by_keyword", [False, True])
def test_gradients_of_inactive_weights_are_masked_after_a_closure_step(by_keyword):
    torch.manual_seed(0)
    model = nn.Linear(10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.2, dense_first_layer=False,
                               dense_last_layer=False, seed=0)
    assert sp.policy.mask_gradients
    x = torch.randn(4, 10)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure=closure) if by_keyword else opt.step(closure)
    assert torch.is_tensor(loss)
    mask = sp.layers[next(iter(sp.layers))].mask
    assert int((model.weight.grad[~mask] != 0).sum()) == 0
    assert int((model.weight.grad[mask] != 0).sum()) > 0
    assert int((model.weight.detach()[~mask] != 0).sum()) == 0


def test_lbfgs_masks_the_gradient_of_every_closure_evaluation():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, dense_first_layer=False,
                               dense_last_layer=False, seed=0)
    mask = sp.layers[next(iter(sp.layers))].mask
    x, target = torch.randn(16, 6), torch.randn(16, 3)
    evaluations = []

    def closure():
        evaluations.append(1)
        opt.zero_grad()
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert len(evaluations) > 1
    assert int((model.weight.grad[~mask] != 0).sum()) == 0
    assert int((model.weight.detach()[~mask] != 0).sum()) == 0
