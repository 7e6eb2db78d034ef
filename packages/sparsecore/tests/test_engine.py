"""Engine behaviour: masks stay applied, policies, schedule, reporting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import MaskingPolicy, hookimpl

from core_helpers import convnet, mlp, train_steps

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def assert_masked(sparsifier):
    for layer in sparsifier.layers.values():
        assert torch.all(layer.weight[~layer.mask] == 0), layer.name


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_masks_stay_applied_after_every_step(opt_name):
    model = mlp()
    opt = OPTIMIZERS[opt_name](model.parameters())
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.25, seed=0)
    expected = {name: round(0.25 * layer.capacity) for name, layer in sp.layers.items()}
    assert {name: layer.nnz for name, layer in sp.layers.items()} == expected
    gen = torch.Generator().manual_seed(3)
    for step in range(1, 6):
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert sp.step == step
        assert_masked(sp)
        # fully masked policy: optimizer state of inactive weights stays zero
        for layer in sp.layers.values():
            for tensor in sp.optimizer_state(layer).values():
                assert torch.all(tensor[~layer.mask] == 0)
    # active weights did train
    assert any((layer.weight[layer.mask] != 0).all() for layer in sp.layers.values())


def test_gradient_accumulation_counts_one_step_per_optimizer_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.3, seed=0)
    gen = torch.Generator().manual_seed(0)
    opt.zero_grad()
    for _ in range(4):  # four micro-batches, one step
        nn.functional.cross_entropy(model(torch.randn(4, 16, generator=gen)), torch.randint(0, 4, (4,), generator=gen)).backward()
    opt.step()
    assert sp.step == 1
    assert_masked(sp)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_skipped_step_does_not_advance_schedule(fused):
    model = mlp()
    kwargs = {"fused": True} if fused else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **kwargs)
    steps_seen = []

    class Recorder:
        @hookimpl
        def on_step(self, step):
            steps_seen.append(step)

    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.3, seed=0, plugins=[Recorder()])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    # a normal step
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert sp.step == 1
    before = [p.detach().clone() for p in model.parameters()]
    # a step with an inf gradient: GradScaler skips it
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert sp.step == 1, "a skipped step must not advance the schedule"
    assert steps_seen == [1]
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())
    assert_masked(sp)


def test_dense_gradient_policy_keeps_momentum_of_inactive_weights():
    class DenseGrads:
        masking_policy = MaskingPolicy(mask_gradients=False, mask_optimizer_state=False, reset_grown_state=False)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=DenseGrads(), density=0.2, seed=0)
    train_steps(model, opt, 3)
    layer = sp.layers["0"]
    buf = sp.momentum(layer)
    assert buf is not None and torch.count_nonzero(buf[~layer.mask]) > 0
    assert torch.all(layer.weight[~layer.mask] == 0)


def test_unmasked_weights_policy_leaves_weights_dense():
    class DenseWeights:
        masking_policy = MaskingPolicy(mask_weights=False, mask_gradients=False, mask_optimizer_state=False,
                                           reset_grown_state=False)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm=DenseWeights(), density=0.2, seed=0)
    train_steps(model, opt, 2)
    assert torch.count_nonzero(model[0].weight) == model[0].weight.numel()
    assert sp.layers["0"].nnz == round(0.2 * 16 * 32)


def test_layer_selection_rules():
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, seed=0)
    assert list(sp.layers) == ["0", "3", "6"]  # convs and linear; BatchNorm and biases stay dense
    assert [l.kind for l in sp.layers.values()] == ["conv2d", "conv2d", "linear"]
    assert torch.count_nonzero(model[0].bias) == 8 and torch.count_nonzero(model[1].weight) == 8
    sp.remove()
    sp2 = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, dense_first_layer=True,
                                dense_last_layer=True, seed=0)
    assert list(sp2.layers) == ["3"]
    sp2.remove()
    sp3 = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, exclude=["6"], seed=0)
    assert list(sp3.layers) == ["0", "3"]
    sp3.remove()
    sp4 = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, include=["3", "6"], seed=0)
    assert list(sp4.layers) == ["3", "6"]


def test_ddp_wrapped_model_uses_inner_names():
    model = mlp()
    wrapped = nn.DataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(wrapped, opt, algorithm="static", density=0.5, seed=0)
    assert list(sp.layers) == ["0", "2", "4"]


def test_report_counts_and_flops():
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.25, seed=0)
    assert sp.report().train_flops is None  # conv output sizes are known after one forward
    model(torch.randn(2, 3, 8, 8))
    report = sp.report()
    stats = {s.name: s for s in report.layers}
    nnz0 = round(0.25 * 8 * 3 * 9)
    assert stats["0"].nnz == nnz0
    assert stats["0"].forward_flops == 2 * nnz0 * 64  # 8x8 output positions
    assert stats["3"].dense_forward_flops == 2 * (8 * 8 * 9) * 36
    assert stats["6"].forward_flops == 2 * round(0.25 * 288 * 10)
    assert report.train_flops == sum(3 * s.forward_flops for s in report.layers)  # masked gradients
    assert report.train_flops_ratio == pytest.approx(report.nnz / report.numel, rel=0.01)
    dense_params = sum(p.numel() for p in model.parameters()) - report.numel
    assert report.dense_params == dense_params
    assert "**total**" in report.table()


def test_set_updates_every_epoch_except_last_with_cosine_rate():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps_per_epoch, epochs = 5, 3
    sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.3, total_steps=steps_per_epoch * epochs,
                               seed=0, prune_rate=0.5)
    nnz = {n: l.nnz for n, l in sp.layers.items()}
    for epoch in range(epochs):
        train_steps(model, opt, steps_per_epoch, seed=epoch)
        sp.epoch_end(epoch)
    assert [r.step for r in sp.history] == [5, 10]  # none after the final epoch
    for report in sp.history:
        rate = 0.5 * (1 + math.cos(math.pi * report.step / 15)) / 2
        assert report.rate == pytest.approx(rate)
    assert {n: l.nnz for n, l in sp.layers.items()} == nnz  # SET conserves per-layer counts
    assert_masked(sp)


def test_set_step_schedule_respects_update_end():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.3, total_steps=40, seed=0,
                               update_every=10, update_end=0.5)
    train_steps(model, opt, 40)
    assert [r.step for r in sp.history] == [10, 20]


def test_grown_weights_start_at_zero_with_zero_momentum():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.3, total_steps=100, seed=0)
    train_steps(model, opt, 3)
    before = {n: l.mask.clone() for n, l in sp.layers.items()}
    values = {n: l.weight.detach().clone() for n, l in sp.layers.items()}
    sp.update_topology(0.5)
    for name, layer in sp.layers.items():
        grown = layer.mask & ~before[name]
        kept = layer.mask & before[name]
        assert grown.any()
        assert torch.all(layer.weight[grown] == 0)
        assert torch.all(sp.momentum(layer)[grown] == 0)
        assert torch.equal(layer.weight[kept], values[name][kept])
        assert layer.version == 2


def test_block_sparse_topology_keeps_whole_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.25, total_steps=10, seed=0, block=(4, 8))
    from sparsecore import selection

    for layer in sp.layers.values():
        assert layer.block == (4, 8)
        assert selection.is_block_structured(layer.mask, (4, 8))
    assert sp.layers["0"].nnz == round(0.25 * 512 / 32) * 32  # 4 of 16 blocks
    assert sp.layers["2"].nnz == round(0.25 * 128 / 32) * 32  # 1 of 4 blocks
    train_steps(model, opt, 2, in_features=32)
    report = sp.update_topology(0.5)
    assert report.layers["0"].nnz == 128 and report.layers["2"].nnz == 32
    for layer in sp.layers.values():
        assert selection.is_block_structured(layer.mask, (4, 8))


def test_block_option_errors():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match="layer '4'.*not divisible.*exclude"):
        sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, block=(8, 8))

    class ElementPrune:
        name = "element-prune"

        @hookimpl
        def select_prune(self, layer, n):
            from sparsecore import selection
            return selection.smallest(layer.weight.abs(), layer.mask, n)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, block=(4, 8), plugins=[ElementPrune()])

    class OddCounts:
        name = "odd-counts"

        @hookimpl
        def plan_update(self, layers):
            return sparsecore.UpdatePlan(prune={name: 3 for name in layers})

    with pytest.raises(sparsecore.HookResultError, match="whole 4x8 blocks"):
        sp.update_topology(0.5)
    sp.remove()
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5, block=(4, 8), plugins=[OddCounts()])
    with pytest.raises(sparsecore.HookResultError, match="not a multiple of the block size 32"):
        sp.update_topology(0.5)


def _one_weight_run(lr=0.5):
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    nn.init.zeros_(model[0].weight)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=1.0, seed=0)
    return model[0].weight, opt, sp


def test_lr_factor_applies_only_during_the_step():
    w, opt, sp = _one_weight_run(0.5)
    sp.lr_factor = 0.1
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    w.grad = torch.ones_like(w)
    opt.step()
    assert seen == [pytest.approx(0.05)]
    assert opt.param_groups[0]["lr"] == 0.5  # exactly the original value, not 0.05 / 0.1
    assert torch.allclose(w.detach(), torch.full_like(w, -0.05))


def test_lr_factor_survives_a_step_that_raised_and_ends_with_remove():
    w, opt, sp = _one_weight_run(0.5)
    sp.lr_factor = 0.1

    def failing_closure():
        raise RuntimeError("boom")

    w.grad = torch.ones_like(w)
    with pytest.raises(RuntimeError):
        opt.step(failing_closure)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the post-hook never ran
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    opt.step()
    assert seen == [pytest.approx(0.05)]  # not compounded to 0.005
    assert opt.param_groups[0]["lr"] == 0.5
    sp.remove()
    opt.step()
    assert seen[-1] == 0.5
