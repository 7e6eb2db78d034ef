"""snip-public's protocol options: variance-scaling init, its scored draw, biases as candidates, the reported metric."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from snip_helpers import make_batch, make_mlp
from torch import nn

import sparsecore
from snip_baseline import (
    RetainedCheckpoints,
    fan_in,
    global_top_k,
    variance_scaling_,
    variance_scaling_copy,
    variance_scaling_init_,
)
from snip_baseline.init import TRUNCATION_STD_CORRECTION

SEED = 3


def _build(model, batch, density=0.2, optimizer=None, **options):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return sparsecore.Sparsifier(model, optimizer, algorithm="snip", density=density, seed=SEED, batch=batch,
                                 **options)


def _hand_scores(model: nn.Sequential, batch) -> dict[str, torch.Tensor]:
    """|w * dL/dw| and |b * dL/db| of the MLP's Linear layers by a hand-written forward (weights first, then biases)."""
    x, y = batch
    linears = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    ws = {name: m.weight.detach().clone().requires_grad_(True) for name, m in linears}
    bs = {name: m.bias.detach().clone().requires_grad_(True) for name, m in linears}
    h = x
    for k, (name, _) in enumerate(linears):
        h = h @ ws[name].t() + bs[name]
        if k < len(linears) - 1:
            h = torch.where(h > 0, h, torch.zeros_like(h))
    logp = h - torch.logsumexp(h, dim=1, keepdim=True)
    (-logp[torch.arange(len(y)), y].mean()).backward()
    out = {name: (ws[name] * ws[name].grad).detach().abs() for name, _ in linears}
    out.update({f"{name}.bias": (bs[name] * bs[name].grad).detach().abs() for name, _ in linears})
    return out


def _top_k(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Exactly the k largest over all tensors, ties by (tensor order, flat index), by a plain sort."""
    entries = [(-float(v), t, i) for t, (name, s) in enumerate(scores.items()) for i, v in enumerate(s.flatten())]
    kept = {(t, i) for _, t, i in sorted(entries)[:k]}
    return {name: torch.tensor([(t, i) in kept for i in range(s.numel())]).view(s.shape)
            for t, (name, s) in enumerate(scores.items())}


# -- the initializer ---------------------------------------------------------------------------
def test_fan_in_follows_tf_for_linear_conv_and_bias_shapes():
    assert fan_in(nn.Linear(784, 300).weight) == 784
    assert fan_in(nn.Conv2d(20, 50, 5).weight) == 500
    assert fan_in(nn.Conv2d(8, 6, 3, groups=2).weight) == 36
    assert fan_in(torch.empty(300)) == 300
    assert fan_in(torch.empty(())) == 1


def test_variance_scaling_draws_a_two_std_truncated_normal_of_variance_one_over_fan_in():
    weight = torch.empty(300, 784, dtype=torch.float64)
    variance_scaling_(weight, torch.Generator().manual_seed(0))
    std = math.sqrt(1 / 784) / TRUNCATION_STD_CORRECTION
    assert float(weight.abs().max()) <= 2 * std
    assert float(weight.var()) == pytest.approx(1 / 784, rel=0.02)
    assert float(weight.mean()) == pytest.approx(0.0, abs=3 * math.sqrt(1 / 784 / weight.numel()))
    again = torch.empty(300, 784, dtype=torch.float32)
    variance_scaling_(again, torch.Generator().manual_seed(0))
    assert torch.equal(again, weight.float())                   # drawn on the CPU in float32: any dtype, same values


def test_variance_scaling_init_draws_linear_and_conv_layers_and_leaves_the_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        model[1].weight.fill_(0.7)
    variance_scaling_init_(model, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(model[0].weight, variance_scaling_(torch.empty(4, 1, 3, 3), g))
    assert torch.equal(model[3].weight, variance_scaling_(torch.empty(3, 64), g))
    assert not model[0].bias.any() and not model[3].bias.any()
    assert torch.equal(model[1].weight, torch.full((4,), 0.7))  # normalisation layers are not drawn
    variance_scaling_init_(model, torch.Generator().manual_seed(5), biases="variance_scaling")
    g = torch.Generator().manual_seed(5)
    for layer in (model[0], model[3]):
        assert torch.equal(layer.weight, variance_scaling_(torch.empty_like(layer.weight), g))
        assert torch.equal(layer.bias, variance_scaling_(torch.empty_like(layer.bias), g))
    with pytest.raises(ValueError, match="biases must be 'zeros' or 'variance_scaling', got 'ones'"):
        variance_scaling_init_(model, biases="ones")


# -- init / score_init --------------------------------------------------------------------------
def test_init_option_trains_the_variance_scaling_draw_and_scores_it(batch):
    model = make_mlp()
    expected = variance_scaling_init_(copy.deepcopy(model), torch.Generator().manual_seed(SEED))
    sparsifier = _build(model, batch, init="variance_scaling")
    kappa = round(1376 * 0.2)
    wanted = _top_k({n: s for n, s in _hand_scores(expected, batch).items() if "bias" not in n}, kappa)
    for name in ("0", "2", "4"):
        assert torch.equal(sparsifier.layers[name].mask, wanted[name])
        assert torch.equal(model.get_submodule(name).weight, expected.get_submodule(name).weight * wanted[name])
        assert not model.get_submodule(name).bias.any()
    assert sparsifier.nnz == kappa


def test_score_init_variance_scaling_scores_a_copy_with_drawn_weights_and_zero_biases(batch):
    model = make_mlp()
    original = copy.deepcopy(model)
    scored = variance_scaling_copy(model, torch.Generator().manual_seed(SEED))
    g = torch.Generator().manual_seed(SEED)
    for layer in scored:
        if isinstance(layer, nn.Linear):                        # weights drawn in order, biases zero (no draw)
            assert torch.equal(layer.weight, variance_scaling_(torch.empty_like(layer.weight), g))
            assert not layer.bias.any()
    sparsifier = _build(model, batch, score_init="variance_scaling")
    wanted = _top_k({n: s for n, s in _hand_scores(scored, batch).items() if "bias" not in n}, round(1376 * 0.2))
    for name in ("0", "2", "4"):
        assert torch.equal(sparsifier.layers[name].mask, wanted[name])
        # the model trains its own weights (masked), not the scored draw
        assert torch.equal(model.get_submodule(name).weight, original.get_submodule(name).weight * wanted[name])
        assert torch.equal(model.get_submodule(name).bias, original.get_submodule(name).bias)


def test_score_bias_init_variance_scaling_draws_the_scored_biases_like_the_weights(batch):
    model = make_mlp()
    scored = variance_scaling_copy(model, torch.Generator().manual_seed(SEED), biases="variance_scaling")
    g = torch.Generator().manual_seed(SEED)
    for layer in scored:
        if isinstance(layer, nn.Linear):                        # layer by layer: weight, then bias
            assert torch.equal(layer.weight, variance_scaling_(torch.empty_like(layer.weight), g))
            assert torch.equal(layer.bias, variance_scaling_(torch.empty_like(layer.bias), g))
    kappa = round((1376 + 60) * 0.2)
    wanted = _top_k(_hand_scores(scored, batch), kappa)
    sparsifier = _build(model, batch, score_init="variance_scaling", score_bias_init="variance_scaling",
                        prune_biases=True, keep_every_layer=False)
    algo = sparsifier.algorithm
    for name in ("0", "2", "4"):
        assert torch.equal(sparsifier.layers[name].mask, wanted[name])
        assert torch.equal(algo.bias_masks[f"{name}.bias"], wanted[f"{name}.bias"])
    assert 0 < algo.result.bias_kept < 60 and sparsifier.nnz + algo.result.bias_kept == kappa


def test_official_options_prune_every_bias_as_snip_public_does(batch):
    # snip-public (since f028496) scores a draw with zero biases: every bias scores 0, and the global top-k
    # gives all kappa places to weights, so the network trains without biases
    model = make_mlp()
    sparsifier = _build(model, batch, density=0.2, init="variance_scaling", score_init="variance_scaling",
                        prune_biases=True, keep_every_layer=False)
    algo = sparsifier.algorithm
    assert (algo.result.bias_kept, algo.result.bias_total) == (0, 60)
    assert sparsifier.nnz == round((1376 + 60) * 0.2)
    assert not any(model.get_submodule(name).bias.any() for name in ("0", "2", "4"))


@pytest.mark.parametrize(("options", "message"), [
    ({"init": "xavier"}, "snip: init must be None or 'variance_scaling', got 'xavier'"),
    ({"score_init": "vs"}, "snip: score_init must be one of 'actual', 'fresh', 'variance_scaling', got 'vs'"),
    ({"prune_biases": "yes"}, "snip: prune_biases must be True or False, got 'yes'"),
    ({"score_bias_init": "ones"}, "snip: score_bias_init must be one of 'zeros', 'variance_scaling', got 'ones'"),
    ({"score_bias_init": "variance_scaling"},
     "snip: score_bias_init='variance_scaling' draws the biases of the variance-scaling copy; it needs "
     "score_init='variance_scaling', got score_init='actual'"),
    ({"prune_biases": True, "per_layer": True}, "cannot be combined with per_layer=True"),
])
def test_bad_protocol_options_are_refused(options, message, batch):
    with pytest.raises(sparsecore.ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _build(make_mlp(), batch, **options)


# -- prune_biases -------------------------------------------------------------------------------------
def test_prune_biases_ranks_biases_with_the_weights(batch):
    model = make_mlp()                                          # biases drawn like the weights: non-zero scores
    hand = _hand_scores(model, batch)
    kappa = round((1376 + 32 + 24 + 4) * 0.2)
    wanted = _top_k(hand, kappa)
    sparsifier = _build(model, batch, prune_biases=True, keep_every_layer=False)
    algo = sparsifier.algorithm
    for name in ("0", "2", "4"):
        assert torch.equal(sparsifier.layers[name].mask, wanted[name])
        assert torch.equal(algo.bias_masks[f"{name}.bias"], wanted[f"{name}.bias"])
    bias_kept = sum(int(wanted[f"{n}.bias"].sum()) for n in ("0", "2", "4"))
    assert 0 < bias_kept < 60                                   # some biases win places, others are pruned
    assert (algo.result.bias_kept, algo.result.bias_total) == (bias_kept, 60)
    assert sparsifier.nnz + bias_kept == kappa
    for name in ("0", "2", "4"):                                # pruned biases are zero from the start
        bias = model.get_submodule(name).bias
        assert not bias[~algo.bias_masks[f"{name}.bias"]].any()


def test_zero_biases_score_zero_and_are_pruned(batch):
    model = make_mlp()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.bias.zero_()
    sparsifier = _build(model, batch, density=0.05, prune_biases=True)
    assert sparsifier.algorithm.result.bias_kept == 0
    assert not any(mask.any() for mask in sparsifier.algorithm.bias_masks.values())
    assert sparsifier.nnz == round((1376 + 60) * 0.05)


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
], ids=["sgd", "adam", "adamw"])
def test_pruned_biases_stay_zero_through_training(make_optimizer, batch):
    model = make_mlp()
    optimizer = make_optimizer(model.parameters())
    sparsifier = _build(model, batch, optimizer=optimizer, prune_biases=True, keep_every_layer=False)
    masks = sparsifier.algorithm.bias_masks
    start = {name: model.get_submodule(name).bias.detach().clone() for name in ("0", "2", "4")}
    x, y = make_batch(seed=7, n=32)
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name in ("0", "2", "4"):
        bias, pruned = model.get_submodule(name).bias, ~masks[f"{name}.bias"]
        assert pruned.any() and not bias[pruned].any()
        for state in optimizer.state[bias].values():
            if torch.is_tensor(state) and state.shape == bias.shape:
                assert not state[pruned].any()
        assert not torch.equal(bias[~pruned], start[name][~pruned])     # kept biases train


def test_pruned_bias_gradients_are_zeroed_before_the_step(batch):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = _build(model, batch, optimizer=optimizer, prune_biases=True, keep_every_layer=False)
    seen = {}
    optimizer.register_step_post_hook(lambda *_: seen.update(
        {n: model.get_submodule(n).bias.grad.clone() for n in ("0", "2", "4")}))
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    optimizer.step()
    for name in ("0", "2", "4"):
        pruned = ~sparsifier.algorithm.bias_masks[f"{name}.bias"]
        assert not seen[name][pruned].any() and seen[name][~pruned].any()


def test_bias_masks_survive_a_checkpoint_and_mismatches_are_refused(batch):
    first = _build(make_mlp(), batch, prune_biases=True, keep_every_layer=False)
    state = first.state_dict()
    second_model = make_mlp(seed=9)
    second = _build(second_model, make_batch(seed=4), prune_biases=True, keep_every_layer=False)
    assert any(not torch.equal(first.algorithm.bias_masks[k], second.algorithm.bias_masks[k])
               for k in first.algorithm.bias_masks)
    second.load_state_dict(state)
    for key, mask in first.algorithm.bias_masks.items():
        assert torch.equal(second.algorithm.bias_masks[key], mask)
    second.remove()
    plain = _build(make_mlp(), batch)
    with pytest.raises(ValueError, match=r"snip: checkpoint has bias masks for \['0.bias', '2.bias', '4.bias'\]"):
        plain.algorithm.load_state_dict(state["plugins"]["snip"])


def test_guard_protects_only_the_named_tensors():
    scores = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([5.0]), "a.bias": torch.tensor([4.0])}
    masks, report = global_top_k(scores, 2, guard=True, guarded=["a", "b"])
    # "a" gets its first entry back; the lowest-ranked kept entry, the unguarded bias, pays for it
    assert {n: m.tolist() for n, m in masks.items()} == {"a": [True, False], "b": [True], "a.bias": [False]}
    assert (report.added, report.removed) == ({"a": 0}, {"a.bias": 1})
    scores = {"a": torch.tensor([3.0, 2.0]), "a.bias": torch.tensor([0.0])}
    masks, report = global_top_k(scores, 2, guard=True, guarded=["a"])
    assert masks["a.bias"].tolist() == [False] and report.added == {}   # an empty bias is not given a place


# -- the reported metric --------------------------------------------------------------------------
def test_retained_checkpoints_report_one_minus_the_best_of_the_last_five():
    kept = RetainedCheckpoints()
    assert (kept.interval, kept.keep) == (1000, 5)
    assert [s for s in (0, 1, 999, 1000, 1500, 2000) if kept.due(s)] == [1000, 2000]
    accuracies = {1000 * i: 0.90 + 0.001 * i for i in range(1, 55)}
    accuracies[50_000] = 0.999                                  # the best one, retained
    accuracies[49_000] = 0.9999                                 # better still, but no longer kept
    for step, acc in accuracies.items():
        kept.record(step, acc)
    assert [s for s, _ in kept.kept] == [50_000, 51_000, 52_000, 53_000, 54_000]
    assert kept.error == pytest.approx(1 - 0.999)


def test_retained_checkpoints_refuse_bad_records():
    kept = RetainedCheckpoints(interval=10, keep=2)
    with pytest.raises(ValueError, match="no checkpoint was recorded: the run needs at least 10 iterations"):
        _ = kept.error
    with pytest.raises(ValueError, match="step 15 is not a checkpoint step"):
        kept.record(15, 0.5)
    kept.record(20, 0.5)
    with pytest.raises(ValueError, match="checkpoint step 10 does not follow the last one, 20"):
        kept.record(10, 0.5)
    with pytest.raises(ValueError, match="accuracy must be a fraction in"):
        kept.record(30, 50.0)
    with pytest.raises(ValueError, match="keep must be a positive int, got 0"):
        RetainedCheckpoints(keep=0)


# -- the recipe ----------------------------------------------------------------------------------------
def test_snip_official_recipe_values():
    from sparsecore.train.job import make_optimizer
    from sparsecore.train.recipes import recipe_config

    config = recipe_config("snip-official").validate()
    assert {k: getattr(config, k) for k in ("algorithm", "model", "dataset", "density", "optimizer", "lr",
                                            "momentum", "nesterov", "weight_decay", "batch_size", "epochs",
                                            "lr_schedule", "lr_step_size", "lr_gamma", "limit_train")} == {
        "algorithm": "snip", "model": "lenet-300-100", "dataset": "mnist", "density": 0.05, "optimizer": "sgd",
        "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "batch_size": 100, "epochs": 100,
        "lr_schedule": "step", "lr_step_size": 25000, "lr_gamma": 0.1, "limit_train": 54000}
    assert config.options == {"init": "variance_scaling", "score_init": "variance_scaling", "prune_biases": True,
                              "keep_every_layer": False}
    optimizer = make_optimizer(config, make_mlp())
    assert (optimizer.param_groups[0]["nesterov"], optimizer.param_groups[0]["weight_decay"]) == (False, 5e-4)


def test_snip_official_recipe_trains_and_resumes_with_pruned_biases_at_zero(tmp_path):
    from sparsecore.train.job import resume_training, run_training
    from sparsecore.train.recipes import recipe_config

    config = recipe_config("snip-official", epochs=2, stop_after=1, limit_train=300, limit_test=100,
                           runs_dir=str(tmp_path), run_name="official", plots=False, quiet=True, threads=1,
                           device="cpu")
    first = run_training(config)
    algo = first.sparsifier.algorithm
    assert (algo.init, algo.score_init, algo.prune_biases, algo.keep_every_layer) == (
        "variance_scaling", "variance_scaling", True, False)
    assert list(algo.bias_masks) == ["fc1.bias", "fc2.bias", "fc3.bias"]
    assert (algo.result.bias_kept, algo.result.bias_total) == (0, 410)   # zero-bias scored draw: all pruned
    resumed = resume_training(first.run_dir)
    assert resumed.completed and resumed.epochs_done == 2
    for key in algo.bias_masks:
        assert not resumed.sparsifier.algorithm.bias_masks[key].any()
        assert not resumed.model.get_parameter(key).any()           # trained a whole epoch, still zero
