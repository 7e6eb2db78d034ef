"""``sr-ste``: per-group top-N masks every step, straight-through gradients with the sparse-refined term,
dense weights, options and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from nm_helpers import MODELS, batches, group_counts, reference_top_n, step
from torch import nn
from torch.nn import functional as F

import sparsecore
from sparsecore_nm import SrSteAlgorithm, masked_weight, prune_weights


def build(kind="linear", pattern="2:4", **options):
    factory, in_shape = MODELS[kind]
    model = factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sr-ste", pattern=pattern, total_steps=20,
                                       seed=0, **options)
    return model, optimizer, sparsifier, in_shape


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_the_mask_is_the_per_group_top_n_of_the_dense_weights_after_every_step(kind, pattern):
    n, m = map(int, pattern.split(":"))
    model, optimizer, sparsifier, in_shape = build(kind, pattern)
    for layer in sparsifier.layers.values():  # before training: from the initial weights
        assert torch.equal(layer.mask, reference_top_n(layer.weight, n, m))
    changed = 0
    for batch in batches(in_shape, 8):
        before = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        step(model, optimizer, batch)
        for name, layer in sparsifier.layers.items():
            assert torch.equal(layer.mask, reference_top_n(layer.weight, n, m)), (name, sparsifier.step)
            assert (group_counts(layer.mask, m) == n).all()
            changed += int((layer.mask != before[name]).sum())
    assert changed > 0  # the masks did follow the weights
    assert sparsifier.history == []  # unrecorded refreshes


def test_weights_stay_dense_and_the_forward_uses_the_masked_weight():
    model, optimizer, sparsifier, in_shape = build("conv")
    for batch in batches(in_shape, 3):
        step(model, optimizer, batch)
    for layer in sparsifier.layers.values():
        assert (layer.weight.detach()[~layer.mask] != 0).all()  # pruned weights keep their values
    x = batches(in_shape, 1, seed=9)[0][0]
    conv0, conv2, linear = model[0], model[2], model[6]
    h = F.relu(F.conv2d(x, conv0.weight * sparsifier.layers["0"].mask, conv0.bias, padding=1))
    h = F.relu(F.conv2d(h, conv2.weight * sparsifier.layers["2"].mask, conv2.bias))
    h = h.mean(dim=(2, 3))
    expected = F.linear(h, linear.weight * sparsifier.layers["6"].mask, linear.bias)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_a_deep_copy_computes_with_its_own_weights_and_the_masks_of_copy_time():
    model, optimizer, sparsifier, in_shape = build("conv")
    step(model, optimizer, batches(in_shape, 1)[0])
    x = batches(in_shape, 1, seed=9)[0][0]
    masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
    teacher = copy.deepcopy(model)  # e.g. an EMA or teacher copy
    expected = model(x).detach()
    assert torch.equal(teacher(x), expected)
    for batch in batches(in_shape, 3, seed=4):  # the student trains on and its masks move
        step(model, optimizer, batch)
    assert any(not torch.equal(layer.mask, masks[name]) for name, layer in sparsifier.layers.items())
    assert torch.equal(teacher(x), expected)
    with torch.no_grad():
        teacher[6].weight.zero_()
    assert torch.equal(teacher(x), teacher[6].bias.expand(x.shape[0], -1))


def reference_gradients(kind, state, masks, batch, lambda_w):
    """``∂L/∂W̃`` of a fresh model whose weights are ``W ⊙ mask``, plus ``λ_W (1 − mask) ⊙ W``; biases as they are."""
    factory, _ = MODELS[kind]
    reference = factory()
    reference.load_state_dict(state)
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_submodule(name).weight.mul_(mask)
    x, y = batch
    F.cross_entropy(reference(x), y).backward()
    out = {}
    for name, mask in masks.items():
        dense = state[f"{name}.weight"]
        out[name] = reference.get_submodule(name).weight.grad + lambda_w * (~mask) * dense
        out[f"{name}.bias"] = reference.get_submodule(name).bias.grad
    return out


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("lambda_w", [2e-4, 0.05, 0.0])
def test_the_optimizer_sees_the_straight_through_gradient_plus_the_sparse_refined_term(kind, lambda_w):
    model, optimizer, sparsifier, in_shape = build(kind, lambda_w=lambda_w)
    seen = {}

    def capture(opt, args, kwargs):  # registered after the engine's: sees what the optimizer will use
        for name, layer in sparsifier.layers.items():
            seen[name] = layer.weight.grad.clone()
            seen[f"{name}.bias"] = layer.module.bias.grad.clone()

    optimizer.register_step_pre_hook(capture)
    for batch in batches(in_shape, 4):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        expected = reference_gradients(kind, state, masks, batch, lambda_w)
        step(model, optimizer, batch)
        for key, grad in expected.items():
            assert torch.allclose(seen[key], grad, rtol=1e-5, atol=1e-7), key
        pruned_grad = [seen[name][~masks[name]] for name in masks]
        assert any(bool((g != 0).any()) for g in pruned_grad)  # straight through: pruned weights get gradient


def test_masked_weight_gradient_is_the_identity():
    weight = torch.randn(4, 8, requires_grad=True)
    mask = torch.arange(32).view(4, 8) % 3 == 0
    upstream = torch.randn(4, 8)
    out = masked_weight(weight, mask)
    assert torch.equal(out, weight * mask)
    out.backward(upstream)
    assert torch.equal(weight.grad, upstream)


def test_the_mask_changes_at_most_once_per_step():
    model, optimizer, sparsifier, in_shape = build()
    for batch in batches(in_shape, 5):
        versions = {name: layer.version for name, layer in sparsifier.layers.items()}
        step(model, optimizer, batch)
        assert all(layer.version - versions[name] in (0, 1) for name, layer in sparsifier.layers.items())


def test_flip_rate_is_the_mean_share_of_mask_entries_changed_per_step():
    model, optimizer, sparsifier, in_shape = build(lambda_w=0.0)
    assert sparsifier.algorithm_metrics() == {}
    flips, total = 0, sum(layer.capacity for layer in sparsifier.layers.values())
    for batch in batches(in_shape, 6):
        before = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        step(model, optimizer, batch)
        flips += sum(int((layer.mask != before[name]).sum()) for name, layer in sparsifier.layers.items())
    sparsifier.epoch_end(0)
    assert flips > 0
    assert sparsifier.algorithm_metrics()["flip_rate"] == pytest.approx(flips / (6 * total))


def test_prune_weights_writes_the_sparse_model_into_the_weights():
    model, optimizer, sparsifier, in_shape = build()
    for batch in batches(in_shape, 3):
        step(model, optimizer, batch)
    x = batches(in_shape, 1, seed=5)[0][0]
    sparse_output = model(x).detach()
    prune_weights(sparsifier)
    sparsifier.remove()
    for layer in sparsifier.layers.values():
        assert torch.equal(layer.weight.detach() != 0, layer.mask)
    assert torch.allclose(model(x), sparse_output, atol=1e-6)


@pytest.mark.parametrize("value", [-1e-4, float("nan"), float("inf"), "2e-4", True, None])
def test_a_bad_lambda_w_is_refused_by_name(value):
    with pytest.raises(sparsecore.ConfigurationError, match=r"sr-ste: lambda_w must be"):
        SrSteAlgorithm(lambda_w=value)


def test_two_four_is_the_default_pattern_and_block_runs_are_refused():
    model, optimizer, sparsifier, _ = build(pattern=None)
    assert str(sparsifier.pattern) == "2:4" and sparsifier.density == 0.5
    sparsifier.remove()
    with pytest.raises(sparsecore.ConfigurationError, match=r"'sr-ste' does not support block-sparse runs"):
        sparsecore.Sparsifier(model, optimizer, algorithm="sr-ste", block=(4, 4))


def test_a_layer_whose_forward_sr_ste_cannot_compute_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Bilinear(8, 8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"sr-ste: layer '1': Bilinear is not one of .*exclude=\['1'\]"):
        sparsecore.Sparsifier(model, optimizer, algorithm="sr-ste", layer_types=[nn.Linear, nn.Bilinear])
    assert "forward" not in model[0].__dict__  # nothing was installed


def test_a_checkpoint_resumes_the_same_masks_and_training():
    model, optimizer, sparsifier, in_shape = build()
    data = batches(in_shape, 6)
    for batch in data[:3]:
        step(model, optimizer, batch)
    saved = copy.deepcopy((sparsifier.state_dict(), model.state_dict(), optimizer.state_dict()))
    for batch in data[3:]:
        step(model, optimizer, batch)
    final = {k: v.clone() for k, v in model.state_dict().items()}

    model2, optimizer2, sparsifier2, _ = build()
    model2.load_state_dict(saved[1])
    optimizer2.load_state_dict(saved[2])
    sparsifier2.load_state_dict(saved[0])
    for batch in data[3:]:
        step(model2, optimizer2, batch)
    assert all(torch.equal(final[k], v) for k, v in model2.state_dict().items())
    assert all(torch.equal(sparsifier.layers[n].mask, sparsifier2.layers[n].mask) for n in sparsifier.layers)


@pytest.mark.parametrize("algorithm", ["sr-ste", "asp"])
def test_trains_under_cpu_bf16_autocast(algorithm):
    factory, in_shape = MODELS["conv"]
    model = factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, total_steps=6, seed=0)
    for x, y in batches(in_shape, 6):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss.detach())
    for layer in sparsifier.layers.values():
        assert layer.weight.dtype == torch.float32 and (group_counts(layer.mask, 4) == 2).all()
