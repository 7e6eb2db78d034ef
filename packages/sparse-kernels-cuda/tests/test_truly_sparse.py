"""Truly sparse mode: SparseLinear, sampling, conversion, and the topology driver against the masked engine."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecore
from sparsecore import ConfigurationError, SparsecoreError, selection
from sparse_kernels_cuda.truly_sparse import (
    SampledGrowth,
    SparseLinear,
    TrulySparseTrainer,
    memory_report,
    to_masked,
    to_truly_sparse,
    transfer_optimizer_state,
)
from sparse_kernels_cuda.truly_sparse import sampling


def masked_linear(n_in: int, n_out: int, density: float, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(n_in, n_out).to(dtype)
    mask = torch.rand(n_out, n_in, generator=g) < density
    with torch.no_grad():
        linear.weight.mul_(mask)
    return linear, mask


# ----------------------------------------------------------------------
# SparseLinear
# ----------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_masked_dense_forward_and_gradients(bias):
    linear, mask = masked_linear(13, 9, 0.3, 0)
    if not bias:
        linear.bias = None
    sparse = SparseLinear.from_dense(linear, mask)
    x = torch.randn(2, 3, 13, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = sparse(x), linear(x_ref)
    assert y.shape == (2, 3, 9)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    positions = mask.reshape(-1).nonzero().squeeze(1)
    assert sparse.values.grad.shape == (int(mask.sum()),)
    torch.testing.assert_close(sparse.values.grad, linear.weight.grad.reshape(-1)[positions], rtol=0, atol=1e-12)
    if bias:
        torch.testing.assert_close(sparse.bias.grad, linear.bias.grad, rtol=0, atol=1e-12)


def test_sparse_linear_holds_only_active_weights():
    linear, mask = masked_linear(40, 30, 0.1, 1, torch.float32)
    sparse = SparseLinear.from_dense(linear, mask)
    nnz = int(mask.sum())
    assert sparse.nnz == nnz and sparse.values.shape == (nnz,)
    assert [p.numel() for p in sparse.parameters()] == [nnz, 30]
    assert sparse.col.dtype == torch.int32 and sparse.col.numel() == nnz and sparse.crow.numel() == 31
    assert sparse.row_t.numel() == nnz and sparse.perm_t.numel() == nnz and sparse.crow_t.numel() == 41
    assert torch.equal(sparse.mask(), mask)
    assert torch.equal(sparse.to_dense(), linear.weight.detach())
    assert torch.equal(sparse.positions(), mask.reshape(-1).nonzero().squeeze(1))
    assert sparse.index_bytes() == 4 * (31 + nnz + 41 + nnz + nnz)


def test_dense_grad_rows_equal_the_dense_weight_gradient():
    linear, mask = masked_linear(11, 7, 0.4, 2)
    sparse = SparseLinear.from_dense(linear, mask)
    sparse.capture_dense_grad = True
    for seed in (0, 1):  # two backward passes accumulate, like a dense weight's .grad
        x = torch.randn(5, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        sparse(x).sum().backward()
        linear(x).sum().backward()
    assert sparse.captured_batches == 2
    torch.testing.assert_close(torch.cat([sparse.dense_grad_rows(0, 3), sparse.dense_grad_rows(3, 7)]),
                               linear.weight.grad, rtol=0, atol=1e-12)
    sparse.clear_captured()
    with pytest.raises(RuntimeError, match="no dense gradient captured"):
        sparse.dense_grad_rows(0, 1)


def test_sparse_linear_rejects_bad_structure():
    with pytest.raises(ValueError, match="sorted and distinct"):
        SparseLinear(4, 3, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 12\)"):
        SparseLinear(4, 3, torch.tensor([1, 12]))
    with pytest.raises(ValueError, match="one entry per position"):
        SparseLinear(4, 3, torch.tensor([1, 2]), torch.zeros(3))
    linear, mask = masked_linear(4, 3, 0.5, 3)
    with torch.no_grad():
        linear.weight.fill_(1.0)
    with pytest.raises(ValueError, match=f"{int((~mask).sum())} nonzero values off the mask"):
        SparseLinear.from_dense(linear, mask)
    with pytest.raises(ValueError, match="input has 5 features, the layer expects 4"):
        SparseLinear(4, 3, torch.tensor([0]))(torch.zeros(2, 5))


def test_state_dict_round_trip_across_structures():
    a = SparseLinear.random(20, 10, 0.2, torch.Generator().manual_seed(0))
    b = SparseLinear.random(20, 10, 0.5, torch.Generator().manual_seed(1))
    assert a.nnz != b.nnz
    b.load_state_dict(a.state_dict())
    assert b.nnz == a.nnz and torch.equal(b.to_dense(), a.to_dense()) and torch.equal(b.bias, a.bias)
    x = torch.randn(3, 20)
    assert torch.equal(b(x), a(x))


def test_random_layer_matches_the_engine_initial_mask():
    g_engine, g_mine = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    mask = selection.random_mask(torch.Size((30, 20)), 120, g_engine, torch.device("cpu"))
    layer = SparseLinear.random(20, 30, 0.2, g_mine, sampler="permutation")
    assert torch.equal(layer.mask(), mask)
    bound = 1 / (0.2 * 20) ** 0.5
    assert float(layer.values.detach().abs().max()) <= bound and float(layer.values.detach().abs().min()) > 0


# ----------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------
def test_inactive_rank_to_position():
    active = torch.tensor([1, 2, 5, 6])
    inactive = torch.tensor([0, 3, 4, 7, 8, 9])
    assert torch.equal(sampling.inactive_rank_to_position(active, torch.arange(6)), inactive)


def test_permutation_growth_is_the_engine_random_choice():
    mask = torch.rand(17, 23, generator=torch.Generator().manual_seed(0)) < 0.3
    g_engine, g_mine = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    grown = selection.random_choice(~mask, 40, g_engine)
    positions = sampling.permutation_growth(mask.reshape(-1).nonzero().squeeze(1), mask.numel(), 40, g_mine)
    assert torch.equal(positions, grown.reshape(-1).nonzero().squeeze(1))
    assert torch.equal(g_engine.get_state(), g_mine.get_state())


def test_sample_inactive_draws_distinct_inactive_positions_uniformly():
    numel = 50
    active = torch.tensor([0, 3, 7, 8, 20, 49])
    counts = torch.zeros(numel)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        chosen = sampling.sample_inactive(active, numel, 10, g)
        assert chosen.numel() == 10 and torch.equal(chosen, chosen.unique())
        assert not bool(sampling.is_active(chosen, active).any())
        counts[chosen] += 1
    assert counts[active].sum() == 0
    expected = 400 * 10 / (numel - active.numel())  # 90.9 per inactive position
    assert float(counts[counts > 0].min()) > 0.6 * expected and float(counts.max()) < 1.4 * expected
    with pytest.raises(ValueError, match="cannot choose 45 among 44 inactive positions"):
        sampling.sample_inactive(active, numel, 45, g)
    full = sampling.sample_inactive(active, numel, 44, g)  # every inactive position, despite rejections
    assert torch.equal(full, torch.tensor([p for p in range(numel) if p not in active.tolist()]))


def test_sample_inactive_scales_past_dense_memory():
    numel = 10**12  # a dense bool mask of this layer would need 1 TB
    active = sampling.sample_positions(numel, 1000, torch.Generator().manual_seed(0))
    grown = sampling.sample_inactive(active, numel, 500, torch.Generator().manual_seed(1))
    assert grown.numel() == 500 and not bool(sampling.is_active(grown, active).any())
    assert int(grown.max()) < numel


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_largest_inactive_equals_selection_largest_with_ties(chunk_rows):
    g = torch.Generator().manual_seed(0)
    score = torch.randint(0, 4, (9, 7), generator=g).double()  # many ties: broken by position
    mask = torch.rand(9, 7, generator=g) < 0.3
    expected = selection.largest(score, ~mask, 20).reshape(-1).nonzero().squeeze(1)
    got = sampling.largest_inactive(lambda a, b: score[a:b], mask.reshape(-1).nonzero().squeeze(1), (9, 7), 20,
                                    chunk_rows)
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------
def make_mlp(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)).to(dtype)


def test_conversion_round_trip_is_exact():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.25, seed=0)
    masks = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    weights = {name: layer.weight.detach().clone() for name, layer in sp.layers.items()}
    sp.remove()
    converted = to_truly_sparse(model, masks)
    assert list(converted) == list(masks) and all(isinstance(model.get_submodule(n), SparseLinear) for n in masks)
    assert sum(p.numel() for p in model.parameters()) == sum(int(m.sum()) for m in masks.values()) + 32 + 24 + 5
    back = to_masked(model)
    for name in masks:
        assert torch.equal(back[name], masks[name])
        assert type(model.get_submodule(name)) is nn.Linear
        assert torch.equal(model.get_submodule(name).weight, weights[name])


def test_conversion_refuses_what_it_cannot_convert_and_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(2, 2, 1))
    mask = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="module '1' is a Conv1d"):
        to_truly_sparse(model, {"0": mask, "1": torch.ones(2, 2, 1, dtype=torch.bool)})
    assert type(model[0]) is nn.Linear  # nothing replaced
    with pytest.raises(ValueError, match="the model has no module 'nope'"):
        to_truly_sparse(model, {"nope": mask})
    with pytest.raises(ValueError, match="layer '0': mask must be a bool tensor shaped like the weight"):
        to_truly_sparse(model, {"0": torch.ones(3, 4, dtype=torch.bool)})


# ----------------------------------------------------------------------
# the driver against the masked engine
# ----------------------------------------------------------------------
def run_both(algorithm: str, *, growth: str = "auto", optimizer: str = "sgd", steps: int = 12,
             convert_at: int = 0, chunk_elements: int = 2**24):
    """Train the same model in masked and truly sparse form; check masks, weights and losses after every step."""
    model = make_mlp()

    def make_opt(params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
        return torch.optim.Adam(params, lr=1e-2)

    opt = make_opt(model.parameters())
    options = {} if algorithm == "static" else {"update_every": 3}
    plugins = [SampledGrowth()] if growth == "sampling" else []
    sp = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, distribution="uniform",
                               total_steps=steps, seed=0, dense_first_layer=False, plugins=plugins, **options)
    data = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 20, generator=data, dtype=torch.float64), torch.randint(0, 5, (16,), generator=data))
               for _ in range(steps)]

    def train_step(m, o, batch):
        o.zero_grad()
        loss = F.cross_entropy(m(batch[0]), batch[1])
        loss.backward()
        o.step()
        return loss.item()

    for batch in batches[:convert_at]:
        train_step(model, opt, batch)
    sparse_model = copy.deepcopy(model)
    converted = to_truly_sparse(sparse_model, sp)
    sparse_opt = make_opt(sparse_model.parameters())
    if convert_at:
        # deepcopy made new parameters: map the masked optimizer's state onto the copy's modules first
        copy_pairs = {name: (model.get_submodule(name), sparse) for name, (_, sparse) in converted.items()}
        transfer_optimizer_state(opt, sparse_opt, copy_pairs)
        for (name, p), p_copy in zip(model.named_parameters(), sparse_model.parameters(), strict=False):
            if not name.endswith("weight") and p in opt.state:
                sparse_opt.state[p_copy] = {k: v.clone() for k, v in opt.state[p].items()}
    trainer = TrulySparseTrainer.from_sparsifier(sp, sparse_model, sparse_opt, growth=growth,
                                                 chunk_elements=chunk_elements)
    worst = 0.0
    for step, batch in enumerate(batches[convert_at:], start=convert_at + 1):
        loss_masked = train_step(model, opt, batch)
        loss_sparse = train_step(sparse_model, sparse_opt, batch)
        worst = max(worst, abs(loss_masked - loss_sparse))
        for name, layer in sp.layers.items():
            assert torch.equal(layer.mask, trainer.layers[name].mask()), f"step {step}, layer {name}: masks differ"
            worst = max(worst, float((layer.weight - trainer.layers[name].to_dense()).abs().max()))
    assert worst < 1e-12, worst  # float64: equal up to summation order
    after_conversion = [r for r in sp.history if r.step > convert_at]
    assert len(trainer.history) == len(after_conversion)
    for mine, theirs in zip(trainer.history, after_conversion, strict=True):
        assert mine.step == theirs.step and mine.rate == theirs.rate
        assert mine.layers == theirs.layers  # pruned, grown, nnz, density per layer
    return sp, trainer


@pytest.mark.parametrize("algorithm", ["static", "set", "rigl"])
def test_same_trajectory_as_the_masked_engine(algorithm):
    sp, trainer = run_both(algorithm)
    expected_updates = 0 if algorithm == "static" else 3  # after steps 3, 6, 9 (never the final step 12)
    assert len(sp.history) == expected_updates
    if expected_updates:
        assert sum(u.grown for u in trainer.history[0].layers.values()) > 0


def test_rigl_same_trajectory_with_dense_gradient_in_row_blocks():
    sp, trainer = run_both("rigl", chunk_elements=40)  # blocks of 2, 1 and 1 rows
    assert len(trainer.history) == 3


def test_same_trajectory_with_adam():
    run_both("set", optimizer="adam")
    run_both("rigl", optimizer="adam")


def test_same_trajectory_with_sampled_growth():
    sp, _ = run_both("set", growth="sampling")
    assert len(sp.history) == 3


def test_same_trajectory_when_converted_midway_with_optimizer_state():
    _, trainer = run_both("set", convert_at=4)
    assert [r.step for r in trainer.history] == [6, 9]


def test_optimizer_state_follows_the_structure():
    layer = SparseLinear.random(10, 8, 0.5, torch.Generator().manual_seed(0), bias=False)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    trainer = TrulySparseTrainer(nn.Sequential(layer), opt, "set", total_steps=100, seed=0, update_every=50,
                                 growth="permutation")
    layer(torch.randn(4, 10)).sum().backward()
    opt.step()
    before = layer.positions()
    momentum = dict(zip(before.tolist(), opt.state[layer.values]["momentum_buffer"].tolist(), strict=True))
    values = dict(zip(before.tolist(), layer.values.detach().tolist(), strict=True))
    report = trainer.update_topology(0.5)
    after = layer.positions().tolist()
    assert layer.nnz == 40 and opt.state[layer.values]["momentum_buffer"].shape == (40,)
    stayed = [p for p in after if p in values]
    assert report.layers["0"].grown == 40 - len(stayed) > 0
    for i, p in enumerate(after):
        assert float(layer.values[i]) == values.get(p, 0.0)
        assert float(opt.state[layer.values]["momentum_buffer"][i]) == momentum.get(p, 0.0)


def test_memory_report_counts_only_active_weights():
    layer = SparseLinear.random(1000, 1000, 0.01, torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1000)).sum().backward()
    opt.step()
    report = memory_report(model, opt)
    assert report["nnz"] == 10_000 and report["dense_numel"] == 1_000_000
    assert report["values"] == report["grads"] == 40_000
    assert report["optimizer_state"] == 40_000 + 4_000  # momentum of the values and of the bias
    assert report["indices"] == layer.index_bytes() == 4 * (1001 + 1001 + 3 * 10_000)


def test_driver_configuration_errors():
    layer = SparseLinear.random(6, 4, 0.5, torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match=r"runs \['static', 'set', 'rigl'\], not 'snip'"):
        TrulySparseTrainer(model, opt, "snip")
    with pytest.raises(ConfigurationError, match="rigl needs total_steps"):
        TrulySparseTrainer(model, opt, "rigl")
    with pytest.raises(ConfigurationError, match="growth must be one of"):
        TrulySparseTrainer(model, opt, "set", growth="fast")
    with pytest.raises(ConfigurationError, match="does not accept option"):
        TrulySparseTrainer(model, opt, "set", bogus=1)
    with pytest.raises(ConfigurationError, match=r"does not hold the values of SparseLinear layer\(s\) \['0'\]"):
        TrulySparseTrainer(model, torch.optim.SGD([layer.bias], lr=0.1), "set")
    with pytest.raises(ConfigurationError, match="has no SparseLinear layer"):
        TrulySparseTrainer(nn.Linear(2, 2), opt, "set")
    trainer = TrulySparseTrainer(model, opt, "rigl", total_steps=10, update_every=2)
    with pytest.raises(SparsecoreError, match="rigl: no dense gradient of step 0 for layer '0'"):
        trainer.update_topology(0.3)
    with pytest.raises(ConfigurationError, match=r"prune rate must be in \[0, 1\]"):
        trainer.update_topology(1.5)


def test_rigl_captures_only_on_update_steps():
    layer = SparseLinear.random(6, 4, 0.5, torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = TrulySparseTrainer(model, opt, "rigl", total_steps=10, update_every=2)
    seen = []
    for _ in range(4):
        seen.append(layer.capture_dense_grad)
        opt.zero_grad()
        model(torch.randn(3, 6)).sum().backward()
        opt.step()
    assert seen == [False, True, False, True]  # steps 2 and 4 end with an update
    assert [r.step for r in trainer.history] == [2, 4] and layer.captured_batches == 0


def test_driver_state_dict_resumes_the_random_stream():
    def build():
        layer = SparseLinear.random(30, 20, 0.2, torch.Generator().manual_seed(0))
        model = nn.Sequential(layer)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, TrulySparseTrainer(model, opt, "set", total_steps=100, seed=5, update_every=10)

    model_a, a = build()
    a.update_topology(0.3)
    state, weights = a.state_dict(), copy.deepcopy(model_a.state_dict())
    a.update_topology(0.3)
    model_b, b = build()
    model_b.load_state_dict(weights)
    b.load_state_dict(state)
    b.update_topology(0.3)
    assert torch.equal(model_a[0].positions(), model_b[0].positions())
    with pytest.raises(ConfigurationError, match="checkpoint has algorithm='static'"):
        b.load_state_dict({**state, "algorithm": "static"})
