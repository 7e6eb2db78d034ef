"""One RigL update against a reference computation: drop by |w|, grow by the hand-set dense gradient."""

from __future__ import annotations

import math

import pytest
import torch

from sparsecore import selection
from sparsecore.testing import make_tiny_model, train_steps


def ranked(score: torch.Tensor, candidates: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """Reference top-``n``: the candidates sorted by score (descending if ``largest``), ties by position."""
    flat_score, flat_cand = score.reshape(-1).tolist(), candidates.reshape(-1).tolist()
    order = sorted((i for i, c in enumerate(flat_cand) if c),
                   key=lambda i: (-flat_score[i] if largest else flat_score[i], i))
    chosen = torch.zeros(len(flat_cand), dtype=torch.bool)
    chosen[order[:n]] = True
    return chosen.view_as(candidates)


def distinct_gradient(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A gradient whose magnitudes are all different (no ties), with random signs."""
    numel = math.prod(shape)
    magnitude = (torch.randperm(numel, generator=generator).float() + 1) / numel
    sign = torch.where(torch.rand(numel, generator=generator) < 0.5, -1.0, 1.0)
    return (magnitude * sign).view(shape)


def step_with_gradient(sparsifier, grads: dict[str, torch.Tensor]) -> None:
    """One optimizer step whose sparse-weight gradients are ``grads`` (other parameters get none)."""
    optimizer = sparsifier.optimizer
    optimizer.zero_grad(set_to_none=True)
    for name, layer in sparsifier.layers.items():
        layer.weight.grad = grads[name].clone()
    optimizer.step()


def test_grown_weights_are_the_top_dense_gradient_inactive_ones(rigl, recorder, drop_fraction):
    sparsifier = rigl(update_every=2, total_steps=100, plugins=[recorder])
    train_steps(sparsifier, 1)
    generator = torch.Generator().manual_seed(7)
    grads = {name: distinct_gradient(layer.shape, generator) for name, layer in sparsifier.layers.items()}
    nnz = {name: layer.nnz for name, layer in sparsifier.layers.items()}
    step_with_gradient(sparsifier, grads)  # step 2 ends with an update

    assert recorder.steps == [2]
    for name, layer in sparsifier.layers.items():
        before = recorder.masks_before[0][name]
        n = math.floor(drop_fraction(2, 100) * nnz[name])
        assert n > 0
        assert recorder.prune_counts[0][name] == n and recorder.grow_counts[0][name] == n
        dropped = ranked(recorder.weights[0][name].abs(), before, n, largest=False)
        kept = before & ~dropped
        grown = ranked(grads[name].abs(), ~kept, n, largest=True)
        assert torch.equal(layer.mask, kept | grown), name
        assert layer.nnz == nnz[name]
        # the dense gradient decided: growth reaches weights that were inactive before the step
        assert bool((grown & ~before).any())


def test_growth_uses_the_dense_gradient_not_the_masked_one(rigl, drop_fraction):
    # The gradient is non-zero only at the last inactive weights: the masked gradient would be 0
    # everywhere, and ties by position would grow the first inactive weights instead.
    sparsifier = rigl(distribution="uniform", update_every=2, total_steps=100)
    train_steps(sparsifier, 1)
    grads, targets, before = {}, {}, {}
    for name, layer in sparsifier.layers.items():
        inactive = (~layer.mask).reshape(-1).nonzero().squeeze(1)
        assert inactive.numel() >= layer.nnz
        targets[name] = inactive[-layer.nnz:]
        g = torch.zeros(layer.capacity)
        g[targets[name]] = torch.arange(1, layer.nnz + 1, dtype=torch.float32)
        grads[name], before[name] = g.view(layer.shape), layer.mask.clone()
    step_with_gradient(sparsifier, grads)
    for name, layer in sparsifier.layers.items():
        n = math.floor(drop_fraction(2, 100) * before[name].sum().item())
        grown = (layer.mask & ~before[name]).reshape(-1).nonzero().squeeze(1).tolist()
        assert n > 0 and sparsifier.history[-1].layers[name].grown == n
        assert sorted(grown) == sorted(targets[name][-n:].tolist()), name  # the n largest gradients


def test_equal_gradients_grow_by_position(rigl, recorder):
    sparsifier = rigl(update_every=2, total_steps=100, plugins=[recorder])
    train_steps(sparsifier, 1)
    grads = {name: torch.full(layer.shape, 0.5) for name, layer in sparsifier.layers.items()}
    step_with_gradient(sparsifier, grads)
    for name, layer in sparsifier.layers.items():
        n = recorder.grow_counts[0][name]
        dropped = ranked(recorder.weights[0][name].abs(), recorder.masks_before[0][name], n, largest=False)
        candidates = (~(recorder.masks_before[0][name] & ~dropped)).reshape(-1).nonzero().squeeze(1)
        grown = torch.zeros(layer.capacity, dtype=torch.bool)
        grown[candidates[:n]] = True  # the first n candidates in flat order
        assert torch.equal(layer.mask, (recorder.masks_before[0][name] & ~dropped) | grown.view(layer.shape))


def test_grown_weights_and_their_sgd_momentum_start_at_zero(rigl, recorder):
    model = make_tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = rigl(model=model, optimizer=optimizer, update_every=4, total_steps=100, plugins=[recorder])
    train_steps(sparsifier, 3)
    for layer in sparsifier.layers.values():  # what a weight would carry into growth if nothing reset it
        optimizer.state[layer.weight]["momentum_buffer"][~layer.mask] = 1.0
    train_steps(sparsifier, 1, seed=1)
    assert recorder.steps == [4]
    for name, layer in sparsifier.layers.items():
        grown = layer.mask & ~recorder.masks_before[0][name]
        assert bool(grown.any())
        assert bool((layer.weight.detach()[grown] == 0).all())
        assert bool((optimizer.state[layer.weight]["momentum_buffer"][grown] == 0).all())


def test_grown_weights_and_their_adam_state_start_at_zero(rigl, recorder):
    model = make_tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsifier = rigl(model=model, optimizer=optimizer, update_every=4, total_steps=100, plugins=[recorder])
    train_steps(sparsifier, 3)
    for layer in sparsifier.layers.values():
        for key in ("exp_avg", "exp_avg_sq"):
            optimizer.state[layer.weight][key][~layer.mask] = 1.0
    train_steps(sparsifier, 1, seed=1)
    assert recorder.steps == [4]
    for name, layer in sparsifier.layers.items():
        grown = layer.mask & ~recorder.masks_before[0][name]
        assert bool(grown.any())
        state = optimizer.state[layer.weight]
        assert bool((layer.weight.detach()[grown] == 0).all())
        assert bool((state["exp_avg"][grown] == 0).all()) and bool((state["exp_avg_sq"][grown] == 0).all())


def test_a_weight_dropped_and_grown_again_keeps_its_value_and_momentum(rigl, recorder):
    # lr 0: the weights do not move, so the weights RigL drops are known before the step.
    model = make_tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    sparsifier = rigl(model=model, optimizer=optimizer, update_every=2, total_steps=100, plugins=[recorder])
    train_steps(sparsifier, 1)
    layer = sparsifier.layers["2"]
    n = math.floor(sparsifier.algorithm.drop_fraction(2) * layer.nnz)
    to_drop = selection.smallest(layer.weight.detach().abs(), layer.mask, n)
    grads = {name: torch.zeros(other.shape) for name, other in sparsifier.layers.items()}
    grads["2"][to_drop] = 1.0  # the dropped weights have the largest dense gradient: they come back
    step_with_gradient(sparsifier, grads)
    assert torch.equal(layer.mask, recorder.masks_before[0]["2"])
    assert torch.equal(layer.weight.detach(), recorder.weights[0]["2"])
    assert bool((recorder.weights[0]["2"][to_drop] != 0).all())
    assert torch.equal(optimizer.state[layer.weight]["momentum_buffer"], recorder.momenta[0]["2"])


def test_inactive_weights_gradients_and_momentum_stay_zero_between_updates(rigl):
    sparsifier = rigl(update_every=5, total_steps=40)
    for i in range(12):
        during_step = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        train_steps(sparsifier, 1, seed=i)
        for name, layer in sparsifier.layers.items():
            inactive = ~layer.mask
            assert bool((layer.weight.detach()[inactive] == 0).all())
            assert bool((sparsifier.momentum(layer)[inactive] == 0).all())
            # the optimizer saw the gradient masked by the masks in force during its step
            assert bool((layer.weight.grad[~during_step[name]] == 0).all())
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [5, 10]  # updates in between


def test_block_updates_keep_whole_blocks_and_grow_the_top_gradient_blocks(rigl, recorder, drop_fraction):
    block = (2, 4)
    sparsifier = rigl(update_every=2, total_steps=100, block=block, plugins=[recorder])
    for layer in sparsifier.layers.values():
        assert selection.is_block_structured(layer.mask, block)
    train_steps(sparsifier, 1)
    generator = torch.Generator().manual_seed(3)
    grads = {name: distinct_gradient(layer.shape, generator) for name, layer in sparsifier.layers.items()}
    nnz = {name: layer.nnz for name, layer in sparsifier.layers.items()}
    step_with_gradient(sparsifier, grads)
    for name, layer in sparsifier.layers.items():
        assert selection.is_block_structured(layer.mask, block), name
        assert layer.nnz == nnz[name]
        before = recorder.masks_before[0][name]
        n_blocks = math.floor(drop_fraction(2, 100) * nnz[name] / 8)
        assert recorder.prune_counts[0][name] == 8 * n_blocks
        # reference on the block grid: block sums of |w| and |g|, ties by block position
        sums = lambda t: t.reshape(t.shape[0] // 2, 2, -1, 4).sum(dim=(1, 3))  # noqa: E731
        active_blocks = before.reshape(before.shape[0] // 2, 2, -1, 4).all(dim=3).all(dim=1)
        dropped = ranked(sums(recorder.weights[0][name].abs()), active_blocks, n_blocks, largest=False)
        kept = active_blocks & ~dropped
        grown = ranked(sums(grads[name].abs()), ~kept, n_blocks, largest=True)
        expected = (kept | grown).repeat_interleave(2, 0).repeat_interleave(4, 1)
        assert torch.equal(layer.mask, expected), name
    train_steps(sparsifier, 20)  # more updates, still whole blocks and the same counts
    assert len(recorder.steps) == 11
    for name, layer in sparsifier.layers.items():
        assert selection.is_block_structured(layer.mask, block)
        assert layer.nnz == nnz[name]


def test_an_update_started_by_hand_is_refused_with_the_reason(rigl):
    sparsifier = rigl(update_every=5)
    train_steps(sparsifier, 2)
    masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
    with pytest.raises(Exception, match=r"rigl: no dense gradient of step 2 .* must come from the schedule"):
        sparsifier.update_topology(0.3)
    assert all(torch.equal(layer.mask, masks[name]) for name, layer in sparsifier.layers.items())
