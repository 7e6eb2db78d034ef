"""A deep copy of a model with a sparsifier attached (an EMA or teacher copy) computes with its own tensors."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sparsecore
from sparsecore import MaskingPolicy, hookimpl
from sparsecore.forwards import ClosureForward


class MaskInForward:
    """Keeps dense weights and masks them in a closure forward (as SR-STE does)."""

    name = "mask-in-forward"
    masking_policy = MaskingPolicy(mask_weights=False, mask_gradients=False, mask_optimizer_state=False)

    @hookimpl
    def layer_forward(self, layer):
        module = layer.module

        def forward(x):
            return F.linear(x, module.weight * layer.mask, module.bias)
        return forward


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, MaskInForward(), 0.25, seed=0)
    return model, opt, sp


def test_closure_forwards_are_installed_deep_copyable():
    model, _, sp = build()
    assert all(isinstance(layer.module.__dict__["forward"], ClosureForward) for layer in sp.layers.values())
    sp.remove()
    assert all("forward" not in layer.module.__dict__ for layer in sp.layers.values())


def test_copy_computes_the_same_function_with_its_own_weights():
    model, _, sp = build()
    x = torch.randn(5, 12)
    copied = copy.deepcopy(model)
    assert torch.equal(copied(x), model(x))
    expected = F.linear(F.relu(F.linear(x, model[0].weight * sp.layers["0"].mask, model[0].bias)),
                        model[2].weight * sp.layers["2"].mask, model[2].bias)
    assert torch.equal(copied(x), expected)

    with torch.no_grad():  # the copy's weights are its own: changing them changes only the copy
        copied[0].weight.mul_(2.0)
    assert torch.equal(model(x), expected)
    assert not torch.equal(copied(x), expected)


def test_copy_keeps_the_masks_of_copy_time_and_the_original_trains_on():
    model, opt, sp = build()
    x, y = torch.randn(5, 12), torch.randint(0, 4, (5,))
    copied = copy.deepcopy(model)
    frozen = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    before = copied(x).detach()

    flipped = {name: ~layer.mask for name, layer in sp.layers.items()}
    sp.set_masks(flipped)  # the original's masks change; the copy's forward keeps its own
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert torch.equal(copied(x), before)
    assert not torch.equal(model(x), before)
    for name, layer in sp.layers.items():
        assert torch.equal(layer.mask, flipped[name]) and not torch.equal(layer.mask, frozen[name])


def test_copy_holds_no_reference_to_the_original_tensors():
    model, _, sp = build()
    copied = copy.deepcopy(model)
    originals = {id(t) for t in [*model.parameters(), *(layer.mask for layer in sp.layers.values())]}
    for name in ("0", "2"):
        forward = copied.get_submodule(name).__dict__["forward"]
        captured = [cell.cell_contents for cell in forward.function.__closure__]
        captured_tensors = [c.weight for c in captured if isinstance(c, nn.Module)]
        captured_tensors += [t for c in captured if hasattr(c, "mask") for t in (c.mask, c.weight)]
        assert captured_tensors and not any(id(t) in originals for t in captured_tensors)


def test_a_new_sparsifier_attaches_to_the_copy():
    model, _, sp = build()
    copied = copy.deepcopy(model)
    other = sparsecore.Sparsifier(copied, torch.optim.SGD(copied.parameters(), lr=0.1), "static", 0.5, seed=1)
    assert other.nnz == sum(round(0.5 * layer.capacity) for layer in other.layers.values())
    other.remove()


def test_pickling_a_model_with_a_closure_forward_says_what_to_save_instead():
    model, _, _ = build()
    with pytest.raises(TypeError, match=r"save model.state_dict\(\) and sparsifier.state_dict\(\) instead"):
        torch.save(model, io.BytesIO())


def plain_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    sp = sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), "static", 0.25, seed=0)
    return model, sp


def test_a_copy_taken_before_the_first_forward_leaves_the_engine_its_own_size_hooks():
    model, sp = plain_model()
    copied = copy.deepcopy(model)
    copied(torch.randn(2, 7, 12))  # 7 positions per example
    assert all(layer.output_positions is None for layer in sp.layers.values())  # the copy reported nothing
    assert set(sp._size_hooks) == set(sp.layers)
    model(torch.randn(2, 5, 12))
    assert [layer.output_positions for layer in sp.layers.values()] == [5, 5]
    assert not sp._size_hooks


def test_a_model_without_replaced_forwards_pickles_whole_before_its_first_forward():
    model, sp = plain_model()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, 12)
    assert torch.equal(loaded(x), model(x))
    for name, layer in sp.layers.items():
        assert torch.equal(loaded.get_submodule(name).weight, layer.weight)
