"""The SWAT training recipes hold the reference code's per-model CIFAR configurations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore.train.job import make_optimizer, make_scheduler
from sparsecore.train.recipes import RECIPES, get_recipe, recipe_config

SHARED = {"algorithm": "swat", "dataset": "cifar10", "density": 0.1, "distribution": "uniform", "optimizer": "sgd",
          "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "batch_size": 128,
          "lr_schedule": "multistep", "augment": True,
          "options": {"variant": "uniform", "period": 20, "sparsify_first_layer": False,
                      "sparsify_last_layer": True}}


def _fields(config, names):
    return {name: getattr(config, name) for name in names}


@pytest.mark.parametrize(("name", "own"), [
    ("swat-wrn-16-8", {"model": "wrn-16-8", "epochs": 200, "lr_milestones": [60, 120, 160], "lr_gamma": 0.2}),
    ("swat-vgg16", {"model": "vgg16-d", "epochs": 150, "lr_milestones": [50, 100], "lr_gamma": 0.1}),
])
def test_swat_recipe_values(name, own):
    config = recipe_config(name).validate()
    expected = {**SHARED, **own}
    assert _fields(config, expected) == expected
    assert config.recipe == name


@pytest.mark.parametrize(("name", "rates"), [
    # learning rate in force during each epoch: the reference yaml's lr_schedule
    ("swat-wrn-16-8", {0: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 159: 0.004, 160: 0.0008, 199: 0.0008}),
    ("swat-vgg16", {0: 0.1, 49: 0.1, 50: 0.01, 99: 0.01, 100: 0.001, 149: 0.001}),
])
def test_swat_recipe_learning_rate_per_epoch(name, rates):
    config = recipe_config(name)
    steps_per_epoch = 3
    model = nn.Linear(2, 2)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    seen = {}
    for epoch in range(config.epochs):
        for _ in range(steps_per_epoch):
            seen.setdefault(epoch, set()).add(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    for epoch, lr in rates.items():
        assert len(seen[epoch]) == 1 and seen[epoch].pop() == pytest.approx(lr), (epoch, seen[epoch])


@pytest.mark.parametrize("name", ["swat-wrn-16-8", "swat-vgg16"])
def test_swat_recipe_optimizer_decays_every_parameter_without_nesterov(name):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    optimizer = make_optimizer(recipe_config(name), model)
    groups = optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) == 6
    assert {(g["weight_decay"], g["momentum"], g["nesterov"]) for g in groups} == {(5e-4, 0.9, False)}


@pytest.mark.parametrize("name", ["swat-wrn-16-8", "swat-vgg16"])
def test_swat_recipe_options_keep_first_layer_dense_last_sparse_period_20(name):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 28 * 28, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = recipe_config(name)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="swat", density=config.density,
                                       **config.options)
    try:
        assert list(sparsifier.layers) == ["2", "5"]          # the first conv stays dense, the classifier is sparse
        assert {name: state.period for name, state in sparsifier.algorithm.states.items()} == {"2": 20, "5": 20}
        assert {round(state.weight_density, 6) for state in sparsifier.algorithm.states.values()} == {0.1}
    finally:
        sparsifier.remove()


def test_retired_swat_cifar_names_its_replacements():
    assert "swat-cifar" not in RECIPES
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"recipe 'swat-cifar' no longer exists: .*swat-wrn-16-8.*swat-vgg16"):
        get_recipe("swat-cifar")
    with pytest.raises(sparsecore.ConfigurationError, match="swat-wrn-16-8"):
        recipe_config("swat-cifar")
