"""The recompute period: counted per epoch (the reference's ``batch_idx % period``), and honoured by structured convs.

The reference (``custom_layers/custom_conv.py``) recomputes its thresholds when
``batch_idx % period == 0``, where ``batch_idx`` restarts at every epoch, and
its structured variants reuse the activation threshold the same way while the
weight selection (``drop_structured``) is exact on every call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecore
from sparsecore_swat import TopKState, install, topk


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_engine_restarts_the_period_count_at_every_epoch_end():
    model = _conv_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="swat", density=0.3, period=3,
                                       sparsify_first_layer=True)
    conv_state = sparsifier.algorithm.states["0"]
    inputs: list[torch.Tensor] = []
    model[0].register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    g = torch.Generator().manual_seed(1)
    recomputed: list[tuple[int, int]] = []
    steps_per_epoch = 4                                         # not a multiple of the period
    for epoch in range(3):
        for step in range(steps_per_epoch):
            before = (conv_state.weight_threshold, conv_state.activation_threshold)
            weight = model[0].weight.detach().clone()
            x = torch.randn(5, 2, 6, 6, generator=g) * (1 + step + epoch)
            optimizer.zero_grad()
            F.cross_entropy(model(x), torch.randint(0, 3, (5,), generator=g)).backward()
            optimizer.step()
            w_thr, x_thr = conv_state.weight_threshold, conv_state.activation_threshold
            if w_thr is not before[0]:
                assert x_thr is not before[1]                   # both thresholds are recomputed together
                assert torch.equal(w_thr, topk.weight_threshold(weight, 0.3))
                assert torch.equal(x_thr, topk.kth_largest(inputs[-1].abs(), 0.3))
                recomputed.append((epoch, step))
            else:
                assert x_thr is before[1]
        sparsifier.epoch_end(epoch)
        assert conv_state.epoch_calls == 0
    # batch_idx % 3 == 0 within each epoch; a count running across epochs would give steps 0, 3 / 2 / 1
    assert recomputed == [(0, 0), (0, 3), (1, 0), (1, 3), (2, 0), (2, 3)]
    assert conv_state.calls == 12
    sparsifier.remove()


def test_start_epoch_makes_the_next_call_recompute(distinct):
    conv = nn.Conv2d(3, 4, 3).double()
    state = install(conv, 0.3, 0.25, period=3)
    for call in range(2):
        conv(distinct(2, 3, 6, 6, seed=call)).sum().backward()
    frozen = (state.weight_threshold, state.activation_threshold)
    assert state.epoch_calls == 2 and not state.recompute_due
    state.start_epoch()
    assert state.epoch_calls == 0 and state.recompute_due and state.calls == 2
    x = distinct(2, 3, 6, 6, seed=5) * 4
    conv(x).sum().backward()
    assert state.weight_threshold is not frozen[0] and state.activation_threshold is not frozen[1]
    assert torch.equal(state.activation_threshold, topk.kth_largest(x.abs(), 0.25))
    assert (state.calls, state.epoch_calls) == (3, 1)


def _saved_activation_count(run):
    values = []

    def pack(t):
        if not isinstance(t, nn.Parameter) and t.is_floating_point() and t.dim() == 1:
            values.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    assert len(values) == 1
    return values[0].numel(), out


@pytest.mark.parametrize("structure", ["channel", "filter"])
def test_structured_conv_reuses_the_activation_threshold_by_period_and_keeps_weights_exact(structure, distinct):
    conv = nn.Conv2d(4, 6, 3).double()
    per_score = distinct(6, 4, 1, 1, seed=1) if structure == "channel" else distinct(6, 1, 1, 1, seed=1)
    with torch.no_grad():
        conv.weight.copy_(per_score * (1.0 + 0.1 * distinct(1, 4, 3, 3, seed=2).abs()))
    state = install(conv, 0.3, 0.25, period=3, structure=structure)
    assert state.reuses_activation_threshold and not state.reuses_weight_threshold
    k_x = topk.keep_count(2 * 4 * 6 * 6, 0.25)
    previous = None
    for call in range(7):
        x = distinct(2, 4, 6, 6, seed=10 + call) * (call + 1)   # the input grows: a frozen threshold keeps more
        w = conv.weight.detach().clone()
        kept_x, y = _saved_activation_count(lambda: conv(x))
        dy = distinct(*y.shape, seed=30 + call)
        y.backward(dy)
        # the weight selection is the exact structured top-K of this call's weight
        assert torch.equal(state.weight_threshold, topk.weight_threshold(w, 0.3, structure))
        x_thr = state.activation_threshold
        x_used = topk.above(x.abs(), x_thr)
        if call % 3 == 0:
            assert torch.equal(x_thr, topk.kth_largest(x.abs(), 0.25))
            assert kept_x == int(x_used.sum()) == k_x
        else:
            assert x_thr is previous
            assert kept_x == int(x_used.sum()) > k_x
        # dW really came from the input against that threshold
        w_used = w * topk.weight_mask(w, state.weight_threshold, structure)
        assert torch.allclose(y, F.conv2d(x, w_used, conv.bias.detach()))
        w_ref = w.clone().requires_grad_()
        F.conv2d(x * x_used, w_ref).backward(dy)
        assert torch.allclose(conv.weight.grad, w_ref.grad)
        conv.weight.grad = None
        previous = x_thr
        with torch.no_grad():
            conv.weight.mul_(1.25)


def test_linear_layers_stay_exact_every_call_whatever_the_period():
    state = TopKState(0.3, 0.25, period=4, layer_kind="linear")
    assert not state.reuses_activation_threshold and not state.reuses_weight_threshold and state.recompute_due


def test_epoch_count_survives_a_checkpoint_and_old_checkpoints_load():
    state = TopKState(0.3, period=4)
    state.calls, state.epoch_calls = 9, 1
    restored = TopKState(0.3, period=4)
    restored.load_state_dict(state.state_dict())
    assert (restored.calls, restored.epoch_calls) == (9, 1)
    old = state.state_dict()
    del old["epoch_calls"]                                      # written while the count ran across epochs
    restored.load_state_dict(old)
    assert (restored.calls, restored.epoch_calls) == (9, 9)
