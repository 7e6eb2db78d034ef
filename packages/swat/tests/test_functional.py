"""The autograd path: forward, both backward products, period (conv only), structures, memory, gradcheck."""

import pytest
import torch
from sparsecore import ConfigurationError
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


def _saved_activation_count(run) -> tuple[int, torch.Tensor]:
    """Run ``run()``; return how many input activations the SWAT layer saved for its weight gradient, and the output.

    The compressed input is a packed ``uint8`` bitmask plus a 1-d tensor of the kept values; the
    kept count is that tensor's length.
    """
    values = []

    def pack(t):
        if not isinstance(t, nn.Parameter) and t.is_floating_point() and t.dim() == 1:
            values.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    assert len(values) == 1
    return values[0].numel(), out


def test_unstructured_conv_reuses_thresholds_between_recomputes(distinct):
    conv = nn.Conv2d(3, 4, 3).double()
    with torch.no_grad():
        conv.weight.copy_(distinct(4, 3, 3, 3, seed=1))
    state = install(conv, 0.3, 0.25, period=3)
    assert state.reuses_thresholds
    k_w = topk.keep_count(conv.weight.numel(), 0.3)            # 33 of 108
    k_x = topk.keep_count(2 * 3 * 6 * 6, 0.25)                 # 54 of 216
    previous = (None, None)
    for call in range(7):
        x = distinct(2, 3, 6, 6, seed=10 + call) * (call + 1)  # the input grows: a frozen threshold keeps more
        w = conv.weight.detach().clone()
        kept_x, y = _saved_activation_count(lambda: conv(x))
        dy = distinct(*y.shape, seed=30 + call)
        y.backward(dy)
        w_thr, x_thr = state.weight_threshold, state.activation_threshold
        w_used = topk.above(w.abs(), w_thr)
        x_used = topk.above(x.abs(), x_thr)
        if call % 3 == 0:
            # recompute: both thresholds are the exact top-K of this call's weight and input
            assert torch.equal(w_thr, topk.weight_threshold(w, 0.3))
            assert torch.equal(x_thr, topk.kth_largest(x.abs(), 0.25))
            assert int(w_used.sum()) == k_w and kept_x == int(x_used.sum()) == k_x
            if call:
                assert w_thr is not previous[0] and not torch.equal(w_thr, previous[0])
                assert x_thr is not previous[1] and not torch.equal(x_thr, previous[1])
        else:
            # in between: the very same thresholds, so the kept counts drift away from k
            assert w_thr is previous[0] and x_thr is previous[1]
            assert int(w_used.sum()) > k_w
            assert kept_x == int(x_used.sum()) > k_x
        # the layer really used those selections: forward with them, dW against them
        assert torch.allclose(y, F.conv2d(x, w * w_used, conv.bias.detach()))
        w_ref = w.clone().requires_grad_()
        F.conv2d(x * x_used, w_ref).backward(dy)
        assert torch.allclose(conv.weight.grad, w_ref.grad)
        conv.weight.grad = None
        previous = (w_thr, x_thr)
        with torch.no_grad():
            conv.weight.mul_(1.25)                             # the weights grow between calls
    assert state.calls == 7


def _exact_case(kind, distinct):
    """A layer for the exact-every-call test; structured weights get distinct slice / filter norms."""
    if kind == "linear":
        module = nn.Linear(12, 7).double()
        weight, x_shape, structure = distinct(7, 12, seed=1), (5, 12), None
    else:
        module = nn.Conv2d(4, 6, 3).double()
        structure = kind.split("-")[1]
        per_score = distinct(6, 4, 1, 1, seed=1) if structure == "channel" else distinct(6, 1, 1, 1, seed=1)
        pattern = 1.0 + 0.1 * distinct(1, 4, 3, 3, seed=2).abs()
        weight, x_shape = per_score * pattern, (2, 4, 6, 6)
    with torch.no_grad():
        module.weight.copy_(weight)
    return module, x_shape, structure


@pytest.mark.parametrize("kind", ["linear", "conv-channel", "conv-filter"])
def test_linear_layers_and_structured_weights_use_exact_top_k_every_call_whatever_the_period(kind, distinct):
    # structured convs reuse the activation threshold by period: test_period.py
    module, x_shape, structure = _exact_case(kind, distinct)
    state = install(module, 0.3, 0.25, period=5, structure=structure)
    assert not state.reuses_weight_threshold
    assert state.reuses_activation_threshold == (kind != "linear")
    scores_numel = topk.weight_scores(module.weight, structure).numel()
    k_w = topk.keep_count(scores_numel, 0.3)
    k_x = topk.keep_count(torch.Size(x_shape).numel(), 0.25)
    thresholds = []
    for step in range(7):
        x = distinct(*x_shape, seed=10 + step) * (step + 1)
        w = module.weight.detach().clone()
        kept_x, y = _saved_activation_count(lambda: module(x))
        y.sum().backward()
        w_thr = state.weight_threshold
        assert torch.equal(w_thr, topk.weight_threshold(w, 0.3, structure))
        assert int(topk.above(topk.weight_scores(w, structure), w_thr).sum()) == k_w
        if kind == "linear":
            assert torch.equal(state.activation_threshold, topk.kth_largest(x.abs(), 0.25))
            assert kept_x == k_x
        w_used = w * topk.weight_mask(w, w_thr, structure)
        assert torch.allclose(y, _plain(module, x, w_used))
        thresholds.append(w_thr)
        with torch.no_grad():
            module.weight.mul_(1.25)                           # a frozen threshold would now keep more
    assert all(not torch.equal(a, b) for a, b in zip(thresholds, thresholds[1:]))


def test_channel_structured_weights_with_element_wise_activation_top_k(distinct):
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    with torch.no_grad():  # distinct slice L1 norms, varying entries within each slice
        conv.weight.copy_(distinct(6, 4, 1, 1, seed=1) * (1.0 + 0.1 * distinct(1, 1, 3, 3, seed=2).abs()))
    install(conv, 0.25, 0.3, structure="channel")
    x = distinct(2, 4, 5, 5, seed=3).requires_grad_()
    y = conv(x)
    dy = distinct(*y.shape, seed=4)
    y.backward(dy)

    w = conv.weight.detach()
    # weights by hand: the top ceil(0.25 * 24) = 6 kernel slices by L1 norm, whole slices
    norms = w.abs().sum(dim=(2, 3))
    slice_thr = norms.flatten().sort(descending=True).values[5]
    w_mask = (norms >= slice_thr)[:, :, None, None].expand_as(w)
    assert int((norms >= slice_thr).sum()) == 6
    # activations by hand: the top ceil(0.3 * 200) = 60 entries of |x| over the whole tensor, element-wise
    x_abs = x.detach().abs()
    x_mask = x_abs >= x_abs.flatten().sort(descending=True).values[59]
    assert int(x_mask.sum()) == 60
    per_plane = x_mask.flatten(2).sum(-1)
    assert bool(((per_plane > 0) & (per_plane < 25)).any())    # not whole (n, c) planes: element-wise
    x_top = x.detach() * x_mask

    assert torch.allclose(y, F.conv2d(x.detach(), w * w_mask, conv.bias.detach(), padding=1))
    assert torch.allclose(x.grad, torch.nn.grad.conv2d_input(x.shape, w * w_mask, dy, padding=1))
    cols = F.unfold(x_top, 3, padding=1)                                # (N, C*9, L)
    dw_ref = torch.einsum("nol,nkl->ok", dy.flatten(2), cols).reshape(w.shape)
    assert torch.allclose(conv.weight.grad, dw_ref)
    assert bool((conv.weight.grad[~w_mask] != 0).any())                 # pruned slices still get gradient
    assert torch.allclose(conv.bias.grad, dy.sum(dim=(0, 2, 3)))


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
    state = TopKState(1.0, 0.5, layer_kind="linear")
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
    with pytest.raises(TypeError, match="BatchNorm2d"):
        install(nn.BatchNorm2d(3), 0.5)
    with pytest.raises(ConfigurationError, match=r"linear layer needs a TopKState\(layer_kind='linear'\)"):
        swat_linear(torch.randn(2, 3), torch.randn(4, 3), None, TopKState(0.5))
    with pytest.raises(ConfigurationError, match=r"conv layer needs a TopKState\(layer_kind='conv'\)"):
        swat_conv(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3), None, TopKState(0.5, layer_kind="linear"),
                  (1, 1), (0, 0), (1, 1))
    conv_state = TopKState(0.5).state_dict()
    with pytest.raises(ValueError, match="saved state is for a 'conv' layer"):
        TopKState(0.5, layer_kind="linear").load_state_dict(conv_state)
