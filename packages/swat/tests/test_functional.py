"""The autograd path: forward, both backward products, period, memory, gradcheck."""

import pytest
import torch
import torch.nn.functional as F
from sparsecore_swat import TopKState, install, swat_conv, swat_linear, topk, uninstall
from torch import nn

W_KEEP, X_KEEP = 0.3, 0.4

CASES = {
    "linear": (lambda: nn.Linear(12, 7), (5, 12)),
    "linear-3d-input": (lambda: nn.Linear(6, 4), (2, 3, 6)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (3, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 7, 7)),
    "conv2d-grouped-dilated": (lambda: nn.Conv2d(4, 6, 3, dilation=2, groups=2), (2, 4, 9, 9)),
}


def _plain(module, x, weight):
    """The module's own op with ``weight`` (its bias detached, so references do not touch its grad)."""
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def _setup(case, distinct):
    make, shape = CASES[case]
    module = make().double()
    with torch.no_grad():
        module.weight.copy_(distinct(*module.weight.shape, seed=1))
    x = distinct(*shape, seed=2).requires_grad_()
    return module, x


@pytest.mark.parametrize("case", CASES)
def test_forward_and_both_gradients_match_hand_written_reference(case, distinct):
    module, x = _setup(case, distinct)
    install(module, W_KEEP, X_KEEP)
    y = module(x)
    dy = distinct(*y.shape, seed=3)
    y.backward(dy)

    w = module.weight.detach()
    w_top = w * topk.topk_mask(w, W_KEEP)
    x_top = x.detach() * topk.topk_mask(x, X_KEEP)

    # forward: the layer with its top-K weights, dense input
    assert torch.allclose(y, _plain(module, x.detach(), w_top))
    # dx: reference gradient with the top-K weights
    x_ref = x.detach().clone().requires_grad_()
    _plain(module, x_ref, w_top).backward(dy)
    assert torch.allclose(x.grad, x_ref.grad)
    # dW: dy against the top-K activations, written out by hand
    if isinstance(module, nn.Linear):
        dw_ref = dy.reshape(-1, dy.shape[-1]).t() @ x_top.reshape(-1, x_top.shape[-1])
    else:
        w_ref = w.clone().requires_grad_()
        _plain(module, x_top, w_ref).backward(dy)
        dw_ref = w_ref.grad
    assert torch.allclose(module.weight.grad, dw_ref)
    # dW is dense-shaped: weights outside the top-K get gradient too
    outside = ~topk.topk_mask(w, W_KEEP)
    assert bool((module.weight.grad[outside] != 0).any())
    # db = sum(dy) over everything but the channel/feature dim
    channel = dy.dim() - 1 if isinstance(module, nn.Linear) else 1
    assert torch.allclose(module.bias.grad, dy.sum(dim=[d for d in range(dy.dim()) if d != channel]))


def test_conv_dw_matches_an_explicit_unfold_reference(distinct):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
    x = distinct(2, 3, 6, 6, seed=4).requires_grad_()
    install(conv, 0.5, 0.25)
    y = conv(x)
    dy = distinct(*y.shape, seed=5)
    y.backward(dy)
    x_top = x.detach() * topk.topk_mask(x, 0.25)
    cols = F.unfold(x_top, 3, padding=1)                              # (N, C*9, L)
    dw_ref = torch.einsum("nol,nkl->ok", dy.flatten(2), cols).reshape(conv.weight.shape)
    assert torch.allclose(conv.weight.grad, dw_ref)


def test_weights_outside_the_top_k_change_after_a_step():
    conv = nn.Conv2d(3, 8, 3)
    before = conv.weight.detach().clone()
    outside = ~topk.topk_mask(before, 0.1)
    install(conv, 0.1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    conv(torch.randn(4, 3, 8, 8)).square().mean().backward()
    opt.step()
    changed = conv.weight.detach() != before
    assert changed[outside].float().mean() > 0.9


@pytest.mark.parametrize("case", ["linear", "conv2d", "conv1d"])
def test_density_one_equals_dense_exactly(case, distinct):
    module, x = _setup(case, distinct)
    dense_w = module.weight.detach().clone().requires_grad_()
    x_dense = x.detach().clone().requires_grad_()
    y_dense = _plain(module, x_dense, dense_w)
    state = install(module, 1.0, 1.0)
    y = module(x)
    dy = distinct(*y.shape, seed=6)
    y.backward(dy)
    y_dense.backward(dy)
    assert state.dense
    assert torch.equal(y, y_dense)
    assert torch.equal(x.grad, x_dense.grad)
    assert torch.equal(module.weight.grad, dense_w.grad)


def test_period_freezes_thresholds_not_selections():
    lin = nn.Linear(20, 10)
    state = install(lin, 0.2, 0.2, period=3)
    thresholds = []
    for i in range(7):
        lin(torch.randn(8, 20) * (i + 1)).sum().backward()
        thresholds.append((state.weight_threshold, state.activation_threshold))
    # recomputed at calls 0, 3, 6; the same tensors are reused in between
    for i in (1, 2, 4, 5):
        assert thresholds[i][0] is thresholds[i - 1][0] and thresholds[i][1] is thresholds[i - 1][1]
    for i in (3, 6):
        assert thresholds[i][1] is not thresholds[i - 1][1]
    # between recomputes the kept activation count drifts with the input scale
    x_small, x_big = torch.randn(8, 20), torch.randn(8, 20) * 100
    state.calls = 1                                   # mid-period: the frozen threshold is reused
    thr = state.activation_threshold
    kept_small = int(topk.above(x_small.abs(), thr).sum())
    kept_big = int(topk.above(x_big.abs(), thr).sum())
    assert kept_big > kept_small


def test_period_one_is_exact_every_call():
    lin = nn.Linear(20, 10)
    state = install(lin, 0.2, 0.25, period=1)
    for scale in (1.0, 50.0):
        x = torch.randn(8, 20) * scale
        lin(x).sum().backward()
        assert torch.equal(state.activation_threshold, topk.kth_largest(x.abs(), 0.25))
        assert int(topk.above(x.abs(), state.activation_threshold).sum()) == topk.keep_count(160, 0.25)


def test_structured_forward_uses_whole_slices(distinct):
    conv = nn.Conv2d(4, 6, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(distinct(6, 4, 3, 3))
    install(conv, 0.25, 1.0, structure="channel")
    x = distinct(1, 4, 5, 5, seed=7)
    y = conv(x)
    w_mask = topk.weight_mask(conv.weight, topk.weight_threshold(conv.weight, 0.25, "channel"), "channel")
    assert bool((w_mask.flatten(2).all(-1) | ~w_mask.flatten(2).any(-1)).all())
    assert torch.allclose(y, F.conv2d(x, conv.weight.detach() * w_mask))


def test_eval_uses_exact_top_k_and_leaves_state_alone():
    conv = nn.Conv2d(3, 4, 3)
    state = install(conv, 0.3, period=5)
    conv.eval()
    x = torch.randn(2, 3, 6, 6)
    y = conv(x)
    assert state.calls == 0 and state.weight_threshold is None
    w_top = conv.weight.detach() * topk.topk_mask(conv.weight, 0.3)
    assert torch.allclose(y, F.conv2d(x, w_top, conv.bias))


@pytest.mark.parametrize("module", [nn.Conv2d(2, 3, 3, padding="same"), nn.Conv2d(2, 3, 4, padding="same"),
                                    nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
                                    nn.Conv1d(2, 3, 3, padding="valid")])
def test_padding_modes_match_the_module(module):
    x = torch.randn(2, 2, *([7] * (module.weight.dim() - 2)))
    install(module, 1.0, 0.5)
    out = module(x)
    uninstall(module)
    assert torch.allclose(out, module(x), atol=1e-6)


def test_dx_and_db_pass_gradcheck_with_sparse_weights(distinct):
    # The forward is linear in x and b with the top-K weights fixed, so dx and db are true gradients.
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(distinct(3, 2, 3, 3, seed=8))
    conv.weight.requires_grad_(False)
    state = TopKState(0.4, 0.5)
    x = distinct(2, 2, 4, 4, seed=9).requires_grad_()
    fn = lambda x, b: swat_conv(x, conv.weight, b, state, (1, 1), (1, 1), (1, 1), 1)
    assert torch.autograd.gradcheck(fn, (x, conv.bias.detach().clone().requires_grad_()))


def test_dw_passes_gradcheck_when_the_input_is_its_own_top_k(distinct):
    # dW is taken against top-K(x); on an input whose nonzeros are exactly its top-K that is the true gradient.
    x = distinct(3, 4, seed=10)
    x = (x * topk.topk_mask(x, 0.5)).requires_grad_()
    w = distinct(2, 4, seed=11).requires_grad_()
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    state = TopKState(1.0, 0.5)
    assert torch.autograd.gradcheck(lambda x, w, b: swat_linear(x, w, b, state), (x, w, b))

    xc = distinct(1, 2, 4, 4, seed=12)
    xc = (xc * topk.topk_mask(xc, 0.5)).requires_grad_()
    wc = distinct(2, 2, 3, 3, seed=13).requires_grad_()
    state = TopKState(1.0, 0.5)
    assert torch.autograd.gradcheck(
        lambda x, w: swat_conv(x, w, None, state, (1, 1), (0, 0), (1, 1), 1), (xc, wc))


def _saved_bytes(run) -> int:
    """Bytes of the non-parameter tensors autograd saves for backward while ``run()`` builds the graph."""
    total = 0

    def pack(t):
        nonlocal total
        if not isinstance(t, nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    out.sum().backward()
    return total


def test_saved_activation_bytes_drop_to_bitmask_plus_values():
    x = torch.randn(8, 16, 16, 16, requires_grad=True)       # 32768 floats = 131072 bytes
    conv = nn.Conv2d(16, 16, 3, padding=1)
    dense = _saved_bytes(lambda: conv(x))
    assert dense == x.numel() * 4
    install(conv, 0.2, 0.2)
    sparse = _saved_bytes(lambda: conv(x))
    k = topk.keep_count(x.numel(), 0.2)                       # no ties in randn
    # packed mask + kept values + the 0-dim weight threshold
    assert sparse == x.numel() // 8 + 4 * k + 4
    assert sparse / dense < 0.24                              # 77 % less at 80 % activation sparsity


def test_bad_arguments_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="period"):
        TopKState(0.5, period=0)
    with pytest.raises(ValueError, match="weight density"):
        TopKState(1.5)
    with pytest.raises(ValueError, match="activation_density"):
        TopKState(0.5, 0.0)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        install(nn.BatchNorm2d(3), 0.5)
