"""Model-level saving (``activation_memory="model"``): same gradients, less saved, model restored on remove()."""

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from sparsecore.models.wide_resnet import WideResNet
from sparsecore_swat import SwatAlgorithm
from sparsecore_swat.activations import (
    BatchNormForward,
    MaxPoolForward,
    ReluForward,
    activation_forwards,
    rebuild_of,
)
from torch import nn


def _vgg_style():
    """conv-BN-ReLU-pool-conv-BN-ReLU(in place)-conv(1x1)-BN-ReLU-pool, then Linear-ReLU-BN1d-Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, 1, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(True), nn.BatchNorm1d(32), nn.Linear(32, 10))


def _wrn_style():
    torch.manual_seed(0)
    return WideResNet(depth=10, widen_factor=2, drop_rate=0.3)


def _run(make, memory, steps=2, density=0.2):
    """Gradients, outputs and BN running stats of ``steps`` SWAT-U training steps."""
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(activation_memory=memory), density=density,
                               seed=0)
    gen = torch.Generator().manual_seed(1)
    record = []
    for _ in range(steps):
        x, y = torch.randn(4, 3, 12, 12, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        torch.manual_seed(2)  # the same dropout masks in both runs
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        record.append([out.detach().clone()] + [p.grad.clone() for p in model.parameters()])
        opt.step()
    record.append([b.clone() for b in model.buffers()])
    return record, sp, model


@pytest.mark.parametrize("make", [_vgg_style, _wrn_style], ids=["vgg-style", "wrn-style"])
def test_gradients_are_bit_identical_to_layer_level_saving(make):
    lean, sp, model = _run(make, "model")
    assert any(isinstance(m.__dict__.get("forward"), ReluForward) for m in model.modules())
    plain, _, _ = _run(make, "layers")
    assert len(lean) == len(plain)
    for step_lean, step_plain in zip(lean, plain, strict=True):
        for a, b in zip(step_lean, step_plain, strict=True):
            assert torch.equal(a, b)


def _saved_during(model, module_type, x):
    """Storages (data_ptr -> bytes) saved for backward while modules of ``module_type`` run, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside = [0]
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if inside[0] and ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    handles = []
    for m in model.modules():
        if isinstance(m, module_type):
            handles.append(m.register_forward_pre_hook(lambda *a: inside.__setitem__(0, inside[0] + 1)))
            handles.append(m.register_forward_hook(lambda *a: inside.__setitem__(0, inside[0] - 1)))
    bn_inputs: dict[int, int] = {}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args: bn_inputs.__setitem__(args[0].untyped_storage().data_ptr(), 1)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
    for h in handles:
        h.remove()
    return saved, set(bn_inputs)


def _chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def _attach(model, memory="model"):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(activation_memory=memory), density=0.2)


def test_relu_and_pool_after_batch_norm_save_only_the_batch_norm_input():
    model = _chain()
    _attach(model)
    saved, bn_inputs = _saved_during(model, (nn.ReLU, nn.MaxPool2d), torch.randn(2, 3, 8, 8))
    after_bn = {ptr: n for ptr, n in saved.items() if ptr in bn_inputs}
    others = {ptr: n for ptr, n in saved.items() if ptr not in bn_inputs}
    assert len(after_bn) == 2  # the two BatchNorm inputs, no new storage
    # the one ReLU that follows a conv directly saves a bitmask: 2*8*4*4 elements -> 32 bytes
    assert sorted(others.values()) == [2 * 8 * 4 * 4 // 8]


def test_swat_conv_after_batch_norm_relu_saves_only_thresholds():
    model = _chain()
    _attach(model)
    saved, bn_inputs = _saved_during(model, nn.Conv2d, torch.randn(2, 3, 8, 8))
    new = {ptr: n for ptr, n in saved.items() if ptr not in bn_inputs}
    # conv 0 is the dense first layer (saves the 2x3x8x8 image); conv 1 and 2 are SWAT: conv 1 reads a rebuildable
    # pool output (thresholds only), conv 2 a plain ReLU output (bitmask + kept values)
    sizes = sorted(new.values())
    assert 2 * 3 * 8 * 8 * 4 in sizes
    assert sizes.count(4) == 4  # weight and activation thresholds of the two SWAT convs (0-dim float32)
    layers, = [_saved_during(_chain(), nn.Conv2d, torch.randn(2, 3, 8, 8))]  # dense model, for scale
    assert sum(new.values()) < sum(layers[0].values())


def test_relu_elsewhere_saves_a_bitmask_and_passes_gradients_like_relu():
    relu = nn.ReLU()
    relu.forward = ReluForward(relu)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(3, 5, 7, dtype=torch.float64)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = relu(x * 1)
    out.backward(grad)
    F.relu(x_ref * 1).backward(grad)
    assert torch.equal(x.grad, x_ref.grad)
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, (3 * 5 * 7 + 7) // 8)]


def test_record_is_dropped_when_the_tensor_is_modified_in_place():
    bn, relu = nn.BatchNorm2d(4), nn.ReLU()
    bn.forward, relu.forward = BatchNormForward(bn), ReluForward(relu)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    z = bn(x)
    assert rebuild_of(z) is not None
    z = z.add_(0.5)  # e.g. a residual added in place after the BatchNorm
    assert rebuild_of(z) is None
    grad = torch.randn(2, 4, 3, 3)
    relu(z).backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    F.relu(F.batch_norm(x_ref, None, None, training=True) + 0.5).backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-6)


def test_no_record_in_eval_mode_or_without_autograd():
    bn = nn.BatchNorm2d(4)
    bn.forward = BatchNormForward(bn)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    bn.eval()
    assert rebuild_of(bn(x)) is None
    bn.train()
    with torch.no_grad():
        assert rebuild_of(bn(x)) is None
    assert rebuild_of(bn(x)) is not None


def test_max_pool_rebuilds_overlapping_windows_exactly():
    bn, relu, pool = nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)
    bn.forward, relu.forward, pool.forward = BatchNormForward(bn), ReluForward(relu), MaxPoolForward(pool)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    grad = torch.randn(2, 4, 5, 5)
    pool(relu(bn(x))).backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    F.max_pool2d(F.relu(F.batch_norm(x_ref, torch.zeros(4), torch.ones(4), torch.ones(4), torch.zeros(4), True)),
                 3, 2, 1).backward(grad)
    assert torch.equal(x.grad, x_ref.grad)


def test_remove_restores_every_module_and_layers_mode_replaces_none():
    model = _vgg_style()
    sp = _attach(model)
    replaced = {name for name, m in model.named_modules() if "forward" in m.__dict__}
    bn_relu_pool = {name for name, m in model.named_modules()
                    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d))}
    assert bn_relu_pool <= replaced
    sp.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())
    model = _vgg_style()
    _attach(model, "layers")
    assert not any("forward" in m.__dict__ for name, m in model.named_modules() if name in bn_relu_pool)


def test_refused_setup_leaves_the_activation_modules_untouched():
    class Refuse:
        @sparsecore.hookimpl
        def on_setup(self, sparsifier):
            raise sparsecore.ConfigurationError("refused")

    model = _vgg_style()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match="refused"):
        sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(), density=0.2, plugins=[Refuse()])
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_bad_activation_memory_is_a_configuration_error():
    with pytest.raises(sparsecore.ConfigurationError, match="swat: activation_memory must be one of"):
        SwatAlgorithm(activation_memory="all")


def test_activation_forwards_covers_supported_module_types_only():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2, return_indices=True),
                          nn.GELU(), nn.SyncBatchNorm(2), nn.ReLU6())
    forwards = activation_forwards(model)
    assert {name: type(f).__name__ for name, f in forwards.items()} == {
        "0": "BatchNormForward", "1": "ReluForward", "2": "MaxPoolForward"}
