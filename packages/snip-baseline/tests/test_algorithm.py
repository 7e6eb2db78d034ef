"""The ``snip`` algorithm through the engine: exact global top-κ, per-layer variant, fixed masks, guard, errors."""

from __future__ import annotations

import copy
import importlib.metadata
import inspect

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from snip_baseline import SCORING_BATCHES_OPTION, SCORING_DATA_OPTION, Snip, SnipAlgorithm, fresh_copy
from snip_helpers import NUMELS, boundary_gap, make_batch, make_mlp, positions, reference_scores, top_k_positions
from sparsecore import ConfigurationError
from torch import nn

TOTAL = sum(NUMELS.values())  # 1376


def sgd(model: nn.Module, **kw) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, **kw)


def masks_of(sparsifier) -> dict[str, torch.Tensor]:
    return {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}


@pytest.mark.parametrize("density, kappa", [(0.5, 688), (0.1, 138), (0.02, 28)])
def test_keeps_exactly_kappa_equal_to_the_hand_written_top_kappa(density, kappa, mlp, batch):
    assert round(TOTAL * density) == kappa
    want_scores = reference_scores(mlp, [batch])
    assert boundary_gap(want_scores, kappa) > 1e-9  # no near-tie at the boundary for this seed
    sp = sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=density, batch=batch, seed=0)
    assert sp.nnz == kappa
    assert positions(masks_of(sp)) == top_k_positions(want_scores, kappa)
    assert sp.algorithm.result.kept == kappa and sp.algorithm.result.total == TOTAL
    assert sp.algorithm.result.guard_added == {}  # no layer severed here, so the guard changed nothing
    for layer in sp.layers.values():
        assert torch.equal(layer.weight.detach() == 0, ~layer.mask)  # pruned weights are zero at once


def test_scores_are_the_globally_normalised_sensitivities(mlp, batch):
    plugin = Snip(batch=batch)
    model = copy.deepcopy(mlp)
    sp = sparsecore.Sparsifier(model, sgd(model), algorithm=plugin, density=0.5, seed=0)
    want = reference_scores(mlp, [batch])
    total = sum(float(s.sum()) for s in want.values())
    got = plugin.scores(sp, {n: sp.layers[n] for n in sp.layers})  # rescoring the pruned copy
    assert abs(sum(float(s.sum()) for s in got.values()) - 1.0) < 1e-12
    # the threshold is the normalised score of the κ-th weight of the unpruned model
    flat = torch.cat([s.reshape(-1) for s in want.values()]).sort(descending=True).values
    assert plugin.result.threshold == pytest.approx(float(flat[687]) / total, rel=1e-9)


def test_loader_scores_the_mean_gradient_of_the_first_batches(mlp):
    batches = [make_batch(seed=s) for s in (11, 12, 13)]
    consumed = []

    def loader():
        for b in batches:
            consumed.append(1)
            yield b

    want = reference_scores(mlp, batches[:2])
    sp = sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=0.1, loader=loader(), num_batches=2, seed=0)
    assert positions(masks_of(sp)) == top_k_positions(want, 138)
    assert len(consumed) == 2 and sp.algorithm.result.num_batches == 2


def test_harness_option_names():
    params = inspect.signature(Snip).parameters
    assert SCORING_DATA_OPTION == "loader" and SCORING_DATA_OPTION in params
    assert SCORING_BATCHES_OPTION == "num_batches" and params[SCORING_BATCHES_OPTION].default == 1


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_per_layer_variant_keeps_each_layers_top_k(distribution, mlp, batch):
    want = reference_scores(mlp, [batch])
    sp = sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=0.1, distribution=distribution,
                               batch=batch, per_layer=True, seed=0)
    counts = {n: round(layer.target_density * layer.capacity) for n, layer in sp.layers.items()}
    if distribution == "uniform":
        assert counts == {"0": 51, "2": 77, "4": 10}
    else:
        assert counts["4"] > 10  # ERK gives the small last layer a higher density
    for name, layer in sp.layers.items():
        assert layer.nnz == counts[name]
        assert positions({name: layer.mask}) == top_k_positions({name: want[name]}, counts[name])


def test_fresh_scores_a_redrawn_copy_and_trains_the_actual_weights(mlp, batch):
    original = {n: m.weight.detach().clone() for n, m in mlp.named_children() if isinstance(m, nn.Linear)}
    fresh = fresh_copy(mlp, ["0", "2", "4"], torch.Generator().manual_seed(3))
    want = reference_scores(fresh, [batch])
    sp = sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=0.1, batch=batch, score_init="fresh", seed=3)
    assert positions(masks_of(sp)) == top_k_positions(want, 138)
    assert positions(masks_of(sp)) != top_k_positions(reference_scores(make_mlp(), [batch]), 138)
    for name, layer in sp.layers.items():
        assert torch.equal(layer.weight.detach(), original[name] * layer.mask)


@pytest.mark.parametrize("make_opt", [
    lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=5e-4),
], ids=["sgd-nesterov", "adam"])
def test_mask_fixed_and_pruned_weights_and_state_stay_zero(make_opt, mlp, batch):
    opt = make_opt(mlp)
    sp = sparsecore.Sparsifier(mlp, opt, algorithm="snip", density=0.1, batch=batch, seed=0, total_steps=6)
    initial = masks_of(sp)
    before_training = {name: layer.weight.detach().clone() for name, layer in sp.layers.items()}
    for step in range(6):
        previous = {name: layer.weight.detach().clone() for name, layer in sp.layers.items()}
        x, y = make_batch(seed=100 + step)
        opt.zero_grad()
        F.cross_entropy(mlp(x), y).backward()
        opt.step()
        if step % 2 == 1:
            sp.epoch_end(step // 2)
        changed_this_step = 0
        for name, layer in sp.layers.items():
            assert torch.equal(layer.mask, initial[name])
            pruned = ~layer.mask
            weight = layer.weight.detach()
            assert int((weight[pruned] != 0).sum()) == 0
            assert int((layer.weight.grad[pruned] != 0).sum()) == 0
            state = sp.optimizer_state(layer)
            assert state  # momentum / moments exist after a step
            for tensor in state.values():
                assert int((tensor[pruned] != 0).sum()) == 0
            changed_this_step += int((weight[layer.mask] != previous[name][layer.mask]).sum())
        # kept weights train: every one of the 138 moves at every step (weight decay alone moves a nonzero weight)
        assert changed_this_step == 138
    for name, layer in sp.layers.items():
        kept = layer.mask
        assert int((layer.weight.detach()[kept] != before_training[name][kept]).sum()) == int(kept.sum())
        assert int((before_training[name][kept] == 0).sum()) == 0  # SNIP never keeps a zero weight
    assert sp.step == 6 and sp.history == [] and sp.nnz == 138


class TwoBranch(nn.Module):
    """``big(x) + 1e-6 * small(x)``: the small branch's sensitivities are a millionth of the big one's."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.big = nn.Linear(8, 3).double()
        self.small = nn.Linear(8, 3).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.big(x) + 1e-6 * self.small(x)


def two_branch_scores(model: TwoBranch, x, y) -> dict[str, torch.Tensor]:
    wb = model.big.weight.detach().clone().requires_grad_(True)
    ws = model.small.weight.detach().clone().requires_grad_(True)
    out = x @ wb.t() + model.big.bias.detach() + 1e-6 * (x @ ws.t() + model.small.bias.detach())
    loss = -(out - torch.logsumexp(out, 1, keepdim=True))[torch.arange(len(y)), y].mean()
    loss.backward()
    return {"big": (wb * wb.grad).abs(), "small": (ws * ws.grad).abs()}


@pytest.mark.parametrize("guard", [False, True])
def test_layer_guard_keeps_one_weight_in_a_layer_that_would_be_severed(guard):
    model = TwoBranch()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    want = two_branch_scores(model, x, y)
    if guard:
        sp = sparsecore.Sparsifier(model, sgd(model), algorithm="snip", density=0.25, batch=(x, y),
                                   keep_every_layer=guard, seed=0)
    else:  # the engine warns about the severed layer
        with pytest.warns(UserWarning, match=r"sparse layer\(s\) \['small'\] start with no active weight"):
            sp = sparsecore.Sparsifier(model, sgd(model), algorithm="snip", density=0.25, batch=(x, y),
                                       keep_every_layer=guard, seed=0)
    kappa = 12  # round(48 * 0.25)
    assert sp.nnz == kappa
    big_rank = top_k_positions({"big": want["big"]}, 12)
    if not guard:
        assert sp.layers["small"].nnz == 0  # severed: every kept weight is in the big branch
        assert positions(masks_of(sp)) == big_rank
    else:
        best_small = int(want["small"].reshape(-1).argmax())
        assert positions({"small": sp.layers["small"].mask}) == {("small", best_small)}
        # paid for by the lowest-scored kept weight of the big branch
        assert positions({"big": sp.layers["big"].mask}) == top_k_positions({"big": want["big"]}, 11)
        assert sp.algorithm.result.guard_added == {"small": best_small}
        assert sp.algorithm.result.guard_removed == {"big": 1}


class BNProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(5, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.bn.training, self.drop.training))
        return self.out(self.drop(self.bn(self.fc(x))))


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_bn_eval_while_scoring_then_train_mode_restored_and_nothing_else_touched(opt_cls):
    torch.manual_seed(0)
    model = BNProbe().train()
    opt = opt_cls(model.parameters(), lr=0.1) if opt_cls is torch.optim.Adam else opt_cls(model.parameters(), lr=0.1,
                                                                                          momentum=0.9)
    running = model.bn.running_mean.clone(), model.bn.running_var.clone()
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    sp = sparsecore.Sparsifier(model, opt, algorithm="snip", density=0.5, batch=(x, y), seed=0)
    assert model.seen == [(False, False)]
    assert model.training and model.bn.training and model.drop.training
    assert torch.equal(model.bn.running_mean, running[0]) and torch.equal(model.bn.running_var, running[1])
    assert all(p.grad is None for p in model.parameters())
    assert len(opt.state) == 0
    assert list(sp.layers) == ["fc", "out"] and sp.nnz == round(45 * 0.5)


def test_missing_scoring_data_says_how_to_pass_it(mlp):
    with pytest.raises(ConfigurationError, match=r"needs data to score.*batch=\(x, y\).*loader="):
        sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=0.1)
    with pytest.raises(ConfigurationError, match="data must be an iterable"):
        sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=0.1, data=3)


def test_bad_scoring_options_raise_configuration_errors(mlp, batch):
    def build(density=0.1, **options):
        return sparsecore.Sparsifier(mlp, sgd(mlp), algorithm="snip", density=density, **options)

    with pytest.raises(ConfigurationError, match="yielded only 1 batch"):
        build(loader=[batch], num_batches=2)
    with pytest.raises(ConfigurationError, match="either batch"):
        build(batch=batch, loader=[batch])
    with pytest.raises(ConfigurationError, match="num_batches=3"):
        build(batch=batch, num_batches=3)
    with pytest.raises(ConfigurationError, match="num_batches must be a positive int"):
        build(loader=[batch], num_batches=0)
    with pytest.raises(ConfigurationError, match="batch must be a pair"):
        build(batch=batch[0])
    with pytest.raises(ConfigurationError, match="not an \\(x, y\\) pair"):
        build(loader=[batch[0]])
    with pytest.raises(ConfigurationError, match="loader must be an iterable"):
        build(loader=3)
    with pytest.raises(ConfigurationError, match="score_init must be"):
        build(batch=batch, score_init="random")
    with pytest.raises(ConfigurationError, match="does not accept"):
        build(batch=batch, batch_size=100)
    with pytest.raises(ConfigurationError, match=r"keeps round\(1376 \* density\) = 0"):
        build(density=1e-4, batch=batch)
    with pytest.raises(ConfigurationError, match="keep_every_layer=False"):
        build(density=0.0015, batch=batch)  # κ = 2 < 3 layers
    with pytest.warns(UserWarning, match="start with no active weight"):
        severed = build(density=0.0015, batch=batch, keep_every_layer=False)
    assert severed.nnz == 2
    severed.remove()
    with pytest.raises(ConfigurationError, match="pass per_layer=True"):
        build(batch=batch, distribution="erk")


@pytest.fixture
def autoload_on(monkeypatch):
    """Entry-point loading on for one test, whatever the environment says; the registry reloads as it was after."""
    monkeypatch.setenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", "0")
    sparsecore.registry.reset()
    yield
    monkeypatch.undo()
    sparsecore.registry.reset()


def test_snip_is_installed_under_the_sparsecore_entry_point(autoload_on):
    eps = [ep for ep in importlib.metadata.entry_points(group="sparsecore") if ep.name == "snip"]
    assert [ep.value for ep in eps] == ["snip_baseline.plugin"]
    reg = sparsecore.registry.algorithm("snip")
    assert reg.factory is SnipAlgorithm and reg.distribution == "snip-baseline"
    assert "snip" in sparsecore.available_algorithms()
