"""DSD through the engine: phases, exact counts, boundaries, learning rate, resume."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import CheckpointError, ConfigurationError
from sparsecore_dsd import DSD

STEPS_PER_EPOCH = 2


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    # Tanh keeps every unit alive, so every weight gets a gradient.
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def batches():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(STEPS_PER_EPOCH, 8, 4, generator=g)
    y = torch.randint(0, 3, (STEPS_PER_EPOCH, 8), generator=g)
    return list(zip(x, y))


DATA = batches()


def train_step(model, opt, x, y):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def run_epoch(model, opt, sp, epoch):
    for x, y in DATA:
        train_step(model, opt, x, y)
    sp.epoch_end(epoch)


class Recorder:
    """Extra plugin: records masks, weights and the phase after every step (before DSD's own on_step)."""

    def __init__(self):
        self.rows = []

    @sparsecore.hookimpl
    def on_step(self, sparsifier, step):
        dsd = sparsifier.algorithm
        self.rows.append({
            "step": step, "phase": dsd.phase,
            "masks": {n: l.mask.clone() for n, l in sparsifier.layers.items()},
            "weights": {n: l.weight.detach().clone() for n, l in sparsifier.layers.items()},
        })


def build(density=0.5, total_steps=None, momentum=0.9, lr=0.1, plugins=(), seed=0, **options):
    options.setdefault("dense_first_layer", True)  # these tests prune the two later layers of the MLP
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sp = sparsecore.Sparsifier(model, opt, algorithm="dsd", density=density, total_steps=total_steps,
                               plugins=list(plugins), seed=7, **options)
    return model, opt, sp


def test_registered_by_name_with_paper_defaults():
    assert "dsd" in sparsecore.available_algorithms()
    model, opt, sp = build(total_steps=6)
    assert isinstance(sp.algorithm, DSD)
    assert list(sp.layers) == ["2", "4"]  # first layer kept dense on request
    assert all(bool(l.mask.all()) for l in sp.layers.values())  # dense start
    assert [l.target_density for l in sp.layers.values()] == [0.5, 0.5]
    assert sp.algorithm.phase == "dense" and sp.algorithm.lr_factor == 1.0
    _, _, sp2 = build(total_steps=6, dense_first_layer=False)
    assert list(sp2.layers) == ["0", "2", "4"]


def test_default_keeps_a_first_conv_dense_and_prunes_a_first_linear():
    from sparsecore.models import create_model

    mlp = create_model("lenet-300-100")
    sp = sparsecore.Sparsifier(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), algorithm="dsd", total_steps=9)
    first = next(name for name, m in mlp.named_modules() if isinstance(m, nn.Linear))
    assert first in sp.layers and sp.layers[first].capacity == 784 * 300  # the MLP's first Linear is pruned
    assert sp.density == 0.7
    conv = create_model("lenet-5-caffe")
    sp = sparsecore.Sparsifier(conv, torch.optim.SGD(conv.parameters(), lr=0.1), algorithm="dsd", total_steps=9)
    first = next(name for name, m in conv.named_modules() if isinstance(m, nn.Conv2d))
    assert first not in sp.layers and first in dict(conv.named_modules())  # the first conv stays dense
    with pytest.raises(sparsecore.ConfigurationError, match="dense_first_layer must be True, False or 'conv'"):
        build(total_steps=6, dense_first_layer="first")


def test_step_schedule_exact_counts_and_fixed_mask():
    rec = Recorder()
    model, opt, sp = build(density=0.7, total_steps=9, plugins=[rec])  # boundaries after steps 3 and 6
    for epoch in range(5):
        for x, y in DATA[: 1 if epoch == 4 else 2]:
            train_step(model, opt, x, y)
        sp.epoch_end(epoch)
    assert [r["phase"] for r in rec.rows] == ["dense"] * 3 + ["sparse"] * 3 + ["redense"] * 3
    expected = {"2": round(30 * 0.7), "4": round(15 * 0.7)}  # 21 and 10 (10.5 rounds to even)
    sparse_rows = rec.rows[3:6]
    for r in sparse_rows:
        for name, n in expected.items():
            assert int(r["masks"][name].sum()) == n
            assert int((r["weights"][name] != 0).sum()) == n
            assert torch.equal(r["masks"][name], sparse_rows[0]["masks"][name])
            assert bool((r["weights"][name][~r["masks"][name]] == 0).all())
    for r in rec.rows[:3] + rec.rows[6:]:
        assert all(bool(m.all()) for m in r["masks"].values())
    assert sp.algorithm.phase_at(step=3) == "dense" and sp.algorithm.phase_at(step=4) == "sparse"
    assert sp.algorithm.phase_at(epoch=1) == "sparse"  # epoch 1 ends at step 4


def test_sparse_mask_is_top_k_of_magnitude_at_the_switch():
    rec = Recorder()
    model, opt, sp = build(density=0.5, total_steps=6, plugins=[rec])
    for x, y in DATA:
        train_step(model, opt, x, y)
    train_step(model, opt, *DATA[0])  # step 3 completes the dense phase
    before = rec.rows[2]["weights"]  # weights after step 3, before DSD switched
    for name, layer in sp.layers.items():
        w = before[name].abs().flatten()
        keep = round(w.numel() * 0.5)
        expected = torch.zeros_like(w, dtype=torch.bool)
        expected[torch.argsort(w, descending=True, stable=True)[:keep]] = True
        assert torch.equal(layer.mask.flatten(), expected)
        assert torch.equal(layer.weight.detach(), before[name] * layer.mask)  # survivors unchanged


def test_prune_masks_exact_count_with_ties():
    model, opt, sp = build(total_steps=6)
    layer = sp.layers["4"]  # 3 x 5
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 2.0, 0.5, 0.5],
                                         [0.5, 0.5, 0.5, 0.5, 0.5],
                                         [-1.0, 0.1, 3.0, 0.5, 0.0]]))
    masks = DSD.prune_masks(sp, {"2": 0.5, "4": 0.4})  # keep round(15 * 0.4) = 6
    expected = torch.tensor([[True, True, True, True, False],
                             [False, False, False, False, False],
                             [True, False, True, False, False]])
    # |W| = 3, 2, 2, 1, 1 are kept (5), then the first 0.5 in flat order (index 3)
    assert torch.equal(masks["4"], expected)
    assert int(masks["2"].sum()) == 15


def test_gradients_and_momentum_of_pruned_weights_are_zero():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 2, 1))
    run_epoch(model, opt, sp, 0)
    assert sp.algorithm.phase == "sparse"
    run_epoch(model, opt, sp, 1)
    for layer in sp.layers.values():
        pruned = ~layer.mask
        assert int(pruned.sum()) > 0
        assert bool((layer.weight.grad[pruned] == 0).all())
        assert bool((opt.state[layer.weight]["momentum_buffer"][pruned] == 0).all())
        assert bool((layer.weight.detach()[pruned] == 0).all())
        # kept weights carry momentum, except those whose unit lost every outgoing weight (zero gradient)
        buf = opt.state[layer.weight]["momentum_buffer"]
        assert torch.equal(buf != 0, layer.weight.grad != 0) and int((buf != 0).sum()) > 0


def test_first_layer_untouched_and_dense_during_sparse():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1))
    run_epoch(model, opt, sp, 0)
    first_before = model[0].weight.detach().clone()
    assert sp.algorithm.phase == "sparse"
    assert bool((model[0].weight != 0).all()) and "0" not in sp.layers
    train_step(model, opt, *DATA[0])
    assert bool((model[0].weight != 0).all())
    assert not torch.equal(model[0].weight.detach(), first_before)  # it trains


def test_sparse_to_redense_boundary_and_every_weight_moves():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 2))
    run_epoch(model, opt, sp, 0)
    masks = {n: l.mask.clone() for n, l in sp.layers.items()}
    for x, y in DATA:
        train_step(model, opt, x, y)
    before = {n: l.weight.detach().clone() for n, l in sp.layers.items()}
    sp.epoch_end(1)  # sparse -> redense
    assert sp.algorithm.phase == "redense"
    for name, layer in sp.layers.items():
        assert bool(layer.mask.all())
        w = layer.weight.detach()
        assert bool((w[~masks[name]] == 0).all())  # pruned weights restart from exactly zero
        assert torch.equal(w[masks[name]], before[name][masks[name]])  # survivors unchanged
    # two steps: a unit whose outgoing weights were all pruned gets a gradient once those restart
    for x, y in DATA:
        train_step(model, opt, x, y)
    for name, layer in sp.layers.items():
        assert bool((layer.weight.detach() != before[name]).all())  # every weight moves, pruned ones included


def test_redense_learning_rate_is_a_tenth_and_undone():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1), momentum=0.0, lr=0.2)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))  # runs after DSD's
    for epoch in range(3):
        run_epoch(model, opt, sp, epoch)
    assert seen == [0.2] * 4 + [pytest.approx(0.02)] * 2
    assert opt.param_groups[0]["lr"] == 0.2
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.2
    # the update really used 0.02: w_new = w - 0.02 * grad (plain SGD)
    w = model[2].weight
    before = w.detach().clone()
    train_step(model, opt, *DATA[0])
    assert torch.allclose(w.detach(), before - 0.02 * w.grad, atol=1e-7)
    assert sp.algorithm.effective_lrs() == [pytest.approx(0.02)]


def test_sparse_lr_scale_compounds_with_redense_scale():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1), lr=1.0, sparse_lr_scale=0.5, redense_lr_scale=0.2)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    for epoch in range(3):
        run_epoch(model, opt, sp, epoch)
    assert seen == [1.0, 1.0, 0.5, 0.5, pytest.approx(0.1), pytest.approx(0.1)]


@pytest.mark.parametrize("make_scheduler, expected", [
    (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), [0.4, 0.2, 0.1, 0.05, 0.025, 0.0125]),
    (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (e + 1)),
     [0.4, 0.2, 0.4 / 3, 0.1, 0.08, 0.4 / 6]),
])
def test_lr_scheduler_keeps_working(make_scheduler, expected):
    model, opt, sp = build(density=0.5, phase_epochs=(2, 2, 2), lr=0.4)
    scheduler = make_scheduler(opt)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    lrs = []
    for epoch in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        run_epoch(model, opt, sp, epoch)
        scheduler.step()
    assert lrs == pytest.approx(expected)  # the scheduler's values, never the scaled ones
    factors = [1.0] * 4 + [0.1] * 2
    assert seen[::2] == pytest.approx([lr * f for lr, f in zip(expected, factors)])


def _save(model, opt, sp, scheduler):
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict(),
                "sched": scheduler.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _full_run(save_after=None):
    model, opt, sp = build(density=0.5, phase_epochs=(2, 2, 3), lr=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ckpt = None
    for epoch in range(7):
        run_epoch(model, opt, sp, epoch)
        scheduler.step()
        if epoch == save_after:
            ckpt = _save(model, opt, sp, scheduler)
    return model, ckpt


def test_resume_in_the_middle_of_redense_is_exact():
    reference, ckpt = _full_run(save_after=4)  # epochs 4..6 are redense; resume after epoch 4
    assert ckpt["sp"]["plugins"]["dsd"]["phase"] == "redense"
    assert ckpt["opt"]["param_groups"][0]["lr"] == pytest.approx(0.05)  # the scheduler's value, unscaled
    model, opt, sp = build(density=0.5, phase_epochs=(2, 2, 3), lr=0.2, seed=99)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sp.load_state_dict(ckpt["sp"])
    scheduler.load_state_dict(ckpt["sched"])
    assert sp.algorithm.phase == "redense" and sp.algorithm.lr_factor == pytest.approx(0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    for epoch in range(5, 7):
        run_epoch(model, opt, sp, epoch)
        scheduler.step()
    assert seen == pytest.approx([0.005] * 2 + [0.0025] * 2)
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_resume_in_the_middle_of_sparse_keeps_the_mask():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 2, 1))
    run_epoch(model, opt, sp, 0)
    run_epoch(model, opt, sp, 1)
    state = sp.state_dict()
    model2, opt2, sp2 = build(density=0.5, phase_epochs=(1, 2, 1), seed=5)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    sp2.load_state_dict(state)
    assert sp2.algorithm.phase == "sparse" and sp2.algorithm.lr_factor == 1.0
    train_step(model2, opt2, *DATA[0])
    for name, layer in sp2.layers.items():
        assert torch.equal(layer.mask, sp.layers[name].mask)
        assert int((layer.weight != 0).sum()) == round(layer.capacity * 0.5)


def test_checkpoint_of_another_schedule_is_refused():
    _, _, sp = build(density=0.5, phase_epochs=(1, 2, 1))
    _, _, other = build(density=0.5, phase_epochs=(2, 2, 1))
    with pytest.raises(CheckpointError, match="boundaries"):
        other.load_state_dict(sp.state_dict())


def test_iterative_mode_recomputes_mask_from_current_weights():
    model, opt, sp = build(density=0.9, phase_epochs=(1, 1, 1, 1, 1), iterations=[0.5, 0.75])
    assert sp.algorithm.names == ("dense", "sparse", "redense", "sparse", "redense")
    run_epoch(model, opt, sp, 0)
    assert [l.nnz for l in sp.layers.values()] == [15, 8]  # round(30 * .5), round(15 * .5) = round(7.5) = 8
    first = {n: l.mask.clone() for n, l in sp.layers.items()}
    run_epoch(model, opt, sp, 1)
    assert sp.algorithm.phase == "redense" and sp.algorithm.iteration == 1
    for x, y in DATA:
        train_step(model, opt, x, y)
    # hand-set weights whose top-k is known and differs from the first mask
    layer2, layer4 = sp.layers["2"], sp.layers["4"]
    with torch.no_grad():
        layer2.weight.copy_(torch.arange(30, dtype=torch.float32).view(5, 6) - 15)  # |W|: 15..1, 0, 1..14
        layer4.weight.copy_(torch.arange(15, dtype=torch.float32).view(3, 5))  # |W| = 0..14
    sp.epoch_end(2)  # redense -> second sparse phase, kept fraction 0.75
    assert sp.algorithm.phase == "sparse" and sp.algorithm.iteration == 2
    w2 = (torch.arange(30) - 15).abs()
    expected2 = torch.zeros(30, dtype=torch.bool)
    expected2[torch.argsort(w2, descending=True, stable=True)[:22]] = True  # round(22.5) = 22
    assert torch.equal(layer2.mask.flatten(), expected2)
    assert torch.equal(layer4.mask.flatten(), torch.arange(15) >= 4)  # round(11.25) = 11 largest
    assert not torch.equal(layer2.mask, first["2"])
    for x, y in DATA:
        train_step(model, opt, x, y)
    assert [l.nnz for l in sp.layers.values()] == [22, 11]
    sp.epoch_end(3)
    run_epoch(model, opt, sp, 4)
    assert sp.algorithm.phase == "redense" and all(bool(l.mask.all()) for l in sp.layers.values())


def test_reset_optimizer_state_at_phase_change():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1))
    run_epoch(model, opt, sp, 0)  # dense -> sparse: every parameter's state discarded, biases and first layer too
    for p in model.parameters():
        assert not opt.state.get(p)
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1), reset_optimizer_state=False)
    run_epoch(model, opt, sp, 0)
    assert bool((opt.state[model[0].weight]["momentum_buffer"] != 0).all())
    layer = sp.layers["2"]
    buf = opt.state[layer.weight]["momentum_buffer"]
    assert bool((buf[~layer.mask] == 0).all()) and bool((buf[layer.mask] != 0).all())


def test_trained_model_is_the_plain_dense_architecture():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1))
    for epoch in range(3):
        run_epoch(model, opt, sp, epoch)
    assert all(bool(l.mask.all()) for l in sp.layers.values())
    for module in model.modules():
        assert "forward" not in module.__dict__
        assert not module._forward_hooks and not module._forward_pre_hooks
    x = DATA[0][0]
    plain = make_model()
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model(x), plain(x))
    sp.remove()  # the engine's hooks carry DSD's learning-rate factor: nothing is left on the optimizer
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    sp.algorithm.remove()  # idempotent
    sp.remove()


@pytest.mark.parametrize("options, match", [
    ({"phases": (0.5, 0.5, 0.0), "phase_epochs": (1, 1, 1)}, "not both"),
    ({"phases": 7}, "phases must be a list of phase lengths, got 7"),
    ({"phase_epochs": "3"}, "phase_epochs must be a list"),
    ({"iterations": []}, "non-empty"),
    ({"iterations": [0.5, 1.5]}, "iterations"),
    ({"redense_lr_scale": 0}, "redense_lr_scale"),
    ({"sparse_lr_scale": -1.0}, "sparse_lr_scale"),
    ({"reset_optimizer_state": "yes"}, "reset_optimizer_state"),
    ({"phases": (0.5, 0.5)}, "needs 3 phase lengths"),
    ({"phase_epochs": (1, 1, 1)}, "needs 5 phase lengths"),
])
def test_bad_options(options, match):
    if match == "needs 5 phase lengths":
        options = {**options, "iterations": [0.5, 0.75]}
    with pytest.raises(ConfigurationError, match=match):
        build(total_steps=30, **options)


def test_fraction_schedule_needs_total_steps():
    with pytest.raises(ConfigurationError, match="total_steps"):
        build(total_steps=None)
    _, _, sp = build(total_steps=None, phase_epochs=(1, 1, 1))  # epochs need no total_steps
    assert sp.algorithm.phase_schedule.boundaries == (1, 2)


def test_iterations_follow_the_engine_distribution():
    _, _, sp = build(density=0.9, total_steps=30, distribution="erk", iterations=[0.5, 0.75])
    shapes = {n: tuple(l.shape) for n, l in sp.layers.items()}
    assert sp.algorithm.sparse_densities == [sparsecore.distributions.erk(shapes, 0.5),
                                             sparsecore.distributions.erk(shapes, 0.75)]
    assert sp.algorithm.sparse_densities[0]["2"] != sp.algorithm.sparse_densities[0]["4"]
    with pytest.raises(ConfigurationError, match="mapping"):
        build(total_steps=30, distribution={"2": 0.5, "4": 0.5}, iterations=[0.5])


def test_default_sparse_phase_uses_the_layer_target_density():
    _, _, sp = build(density=0.6, total_steps=30, distribution={"2": 0.5, "4": 0.8})
    assert sp.algorithm.sparse_densities == [{"2": 0.5, "4": 0.8}]
    masks = DSD.prune_masks(sp, sp.algorithm.sparse_densities[0])
    assert [int(m.sum()) for m in masks.values()] == [15, 12]


def test_train_harness_phase_matches_the_evaluated_density(tmp_path):
    """``sparsecore train``'s per-epoch phase describes the model it evaluated (step-scheduled switches)."""
    from sparsecore.train import TrainConfig, run_training

    result = run_training(TrainConfig(algorithm="dsd", density=0.5, dataset="random", limit_train=60, limit_test=20,
                                      batch_size=20, epochs=6, threads=1, quiet=True, plots=False,
                                      runs_dir=str(tmp_path)))
    phases = [m["phase"] for m in result.metrics]
    assert phases == ["dense", "sparse", "sparse", "redense", "redense", "redense"]
    for m in result.metrics:
        assert (m["density"] < 1.0) == (m["phase"] == "sparse"), m
    summary = (result.run_dir / "summary.md").read_text()
    assert "| epoch (phase at its end) |" in summary and "| 2 (sparse) |" in summary


def test_default_density_is_the_papers_30_percent_sparsity():
    """Without ``density`` the sparse phase keeps 0.7 of every sparse layer; an explicit density wins."""
    for density, kept in ((None, {"2": 21, "4": 10}), (0.5, {"2": 15, "4": 8})):  # round(10.5) = 10, round(7.5) = 8
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        kwargs = {} if density is None else {"density": density}
        rec = Recorder()
        sp = sparsecore.Sparsifier(model, opt, algorithm="dsd", total_steps=6, plugins=[rec], seed=7,
                                   dense_first_layer=True, **kwargs)
        assert sp.density == (0.7 if density is None else density)
        for x, y in DATA + DATA:  # steps 1, 2: the dense third; 3, 4: the sparse third
            train_step(model, opt, x, y)
        for row in rec.rows[2:4]:  # recorded after the step, before DSD's switch at the end of the phase
            assert row["phase"] == "sparse"
            assert {n: int(m.sum()) for n, m in row["masks"].items()} == kept
            assert {n: int((w != 0).sum()) for n, w in row["weights"].items()} == kept


def test_sparsifier_remove_takes_the_learning_rate_hooks_off():
    model, opt, sp = build(density=0.5, phase_epochs=(1, 1, 1), momentum=0.0, lr=0.2)
    run_epoch(model, opt, sp, 0)
    run_epoch(model, opt, sp, 1)
    assert sp.algorithm.phase == "redense" and sp.algorithm.lr_factor == pytest.approx(0.1)
    sp.remove()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert sp.algorithm.effective_lrs() == [0.2]
    w = model[2].weight
    before = w.detach().clone()
    train_step(model, opt, *DATA[0])
    assert opt.param_groups[0]["lr"] == 0.2
    assert torch.equal(w.detach(), before.add(w.grad, alpha=-0.2))  # plain SGD at the group's own lr
    assert torch.allclose(before - w.detach(), 0.2 * w.grad, atol=1e-7)
    assert not torch.allclose(before - w.detach(), 0.02 * w.grad, atol=1e-7)


OPTIMIZERS = {
    "sgd-dampening": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.5),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.1, initial_accumulator_value=0.1),
    "rprop": lambda params: torch.optim.Rprop(params, lr=0.01),
    "asgd": lambda params: torch.optim.ASGD(params, lr=0.01),
}


@pytest.mark.parametrize("boundary", [1, 2], ids=["dense-to-sparse", "sparse-to-redense"])
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_state_reset_makes_the_next_step_a_fresh_optimizers_first(kind, boundary):
    make_opt = OPTIMIZERS[kind]
    model = make_model()
    opt = make_opt(model.parameters())
    sp = sparsecore.Sparsifier(model, opt, algorithm="dsd", density=0.5, phase_epochs=(1, 1, 1),
                               redense_lr_scale=1.0, seed=7)
    for epoch in range(boundary):
        run_epoch(model, opt, sp, epoch)
    assert sp.algorithm.phase == ("sparse", "redense")[boundary - 1]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = DATA[0]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    # the same step by a freshly built optimizer, with the engine's masking done by hand
    ref = make_model(seed=1)
    ref.load_state_dict(params)
    ref_opt = make_opt(ref.parameters())
    masks = {f"{n}.weight": l.mask for n, l in sp.layers.items()}
    for n, p in ref.named_parameters():
        p.grad = grads[n] * masks[n] if n in masks else grads[n]
    ref_opt.step()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), n


def make_block_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))


def test_block_sparse_phase_keeps_whole_blocks_of_largest_magnitude():
    rec = Recorder()
    model = make_block_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm="dsd", total_steps=6, block=(2, 2), plugins=[rec], seed=7,
                               dense_first_layer=True)
    for x, y in DATA:  # the dense third
        train_step(model, opt, x, y)
    assert sp.algorithm.phase == "sparse"
    # default density 0.7 in whole 2x2 blocks: round(0.7 * 16) = 11 of 16 blocks, round(0.7 * 8) = 6 of 8 blocks
    kept = {"2": 44, "4": 24}
    assert {n: l.active_count(0.7) for n, l in sp.layers.items()} == kept
    for name, layer in sp.layers.items():
        w = rec.rows[-1]["weights"][name]  # weights at the switch
        sums = w.abs().view(w.shape[0] // 2, 2, w.shape[1] // 2, 2).sum(dim=(1, 3)).flatten()
        top = torch.zeros_like(sums, dtype=torch.bool)
        top[torch.argsort(sums, descending=True, stable=True)[:kept[name] // 4]] = True
        expected = top.view(w.shape[0] // 2, w.shape[1] // 2).repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert torch.equal(layer.mask, expected)
    switch_masks = {n: l.mask.clone() for n, l in sp.layers.items()}
    for x, y in DATA:  # the sparse third: the mask stays, counts stay exact
        train_step(model, opt, x, y)
        row = rec.rows[-1]  # after the step, before DSD's switch at the end of the phase
        assert row["phase"] == "sparse"
        for name in sp.layers:
            assert torch.equal(row["masks"][name], switch_masks[name])
            assert int((row["weights"][name] != 0).sum()) == kept[name]
            assert sparsecore.selection.is_block_structured(row["masks"][name], (2, 2))
    assert sp.algorithm.phase == "redense" and all(bool(l.mask.all()) for l in sp.layers.values())
