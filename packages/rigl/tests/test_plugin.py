"""Registration, options, layer defaults, FLOPs accounting and the masked-gradient guard of ``rigl``."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.nn import functional as F

import sparsecore
from sparsecore import ConfigurationError, distributions
from sparsecore.testing import make_tiny_model, train_steps
from sparsecore_rigl import RigLAlgorithm, plugin, rigl_train_flops


# ----------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------
def test_the_entry_point_module_registers_rigl():
    eps = [ep for ep in importlib.metadata.entry_points(group="sparsecore") if ep.name == "rigl"]
    assert [ep.value for ep in eps] == ["sparsecore_rigl.plugin"]
    registered = []
    plugin.sparsecore_register_algorithms(register=lambda name, factory: registered.append((name, factory)))
    assert registered == [("rigl", RigLAlgorithm)]


@pytest.mark.slow
def test_installed_distribution_is_found_through_entry_points():
    env = {**os.environ, "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD": "0"}
    code = ("import sparsecore; r = sparsecore.registry.algorithm('rigl'); "
            "print(r.factory.__module__, r.factory.__name__, r.distribution)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sparsecore_rigl.algorithm", "RigLAlgorithm", "sparsecore-rigl"]


@pytest.fixture
def autoload_off(monkeypatch):
    """Entry-point loading off for one test; the registry reloads as it was afterwards."""
    monkeypatch.setenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    sparsecore.registry.reset()
    yield
    monkeypatch.undo()
    sparsecore.registry.reset()


def test_runs_with_autoload_disabled_through_the_registry(autoload_off, register_algorithm, sparsifier_factory):
    assert "rigl" not in sparsecore.available_algorithms()
    register_algorithm("rigl", RigLAlgorithm)
    sparsifier = sparsifier_factory("rigl", density=0.3, total_steps=40, update_every=5)
    train_steps(sparsifier, 20)
    assert isinstance(sparsifier.algorithm, RigLAlgorithm)
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [5, 10, 15, 20]


def test_an_algorithm_object_works_without_any_registration(sparsifier_factory):
    sparsifier = sparsifier_factory(RigLAlgorithm(update_every=5), density=0.3, total_steps=40)
    train_steps(sparsifier, 10)
    assert sparsifier.algorithm_name == "rigl"
    assert len([r for r in sparsifier.history if r.reason == "update"]) == 2


# ----------------------------------------------------------------------
# options
# ----------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"prune_rate": 0}, r"rigl: prune_rate must be a number in \(0, 1\], got 0"),
    ({"prune_rate": 1.5}, r"rigl: prune_rate must be a number in \(0, 1\], got 1.5"),
    ({"prune_rate": "0.3"}, r"rigl: prune_rate must be a number"),
    ({"decay": "step"}, r"rigl: decay must be one of 'cosine', 'linear', 'constant', got 'step'"),
    ({"update_every": 0}, r"rigl: update_every must be a positive int number of optimizer steps"),
    ({"update_every": "epoch"}, r"rigl: update_every must be a positive int .* got 'epoch'"),
    ({"update_every": 2.5}, r"rigl: update_every must be a positive int .* got 2.5"),
    ({"update_every": True}, r"rigl: update_every must be a positive int .* got True"),
    ({"update_end": 0}, r"rigl: update_end must be a number in \(0, 1\], got 0"),
    ({"update_end": 1.25}, r"rigl: update_end must be a number in \(0, 1\], got 1.25"),
])
def test_bad_options_are_refused_naming_rigl_and_the_option(options, message):
    with pytest.raises(ConfigurationError, match=message):
        RigLAlgorithm(**options)


def test_unknown_option_and_missing_total_steps_are_refused(rigl):
    with pytest.raises(ConfigurationError, match=r"algorithm 'rigl' does not accept option\(s\) \['drop_fraction'\]"):
        rigl(drop_fraction=0.3)
    with pytest.raises(ConfigurationError, match="rigl needs total_steps"):
        rigl(total_steps=None)


def test_defaults_are_the_papers():
    algorithm = RigLAlgorithm()
    assert (algorithm.prune_rate, algorithm.decay, algorithm.update_every, algorithm.update_end) == \
        (0.3, "cosine", 100, 0.75)
    assert algorithm.schedule.config() == {"prune_rate": 0.3, "decay": "cosine", "eta_min": 0.0,
                                           "update_every": 100, "update_end": 0.75}
    assert algorithm.masking_policy == sparsecore.MaskingPolicy(True, True, True, True)
    assert algorithm.patterns == ("unstructured", "block", "n:m")


# ----------------------------------------------------------------------
# which layers are sparse
# ----------------------------------------------------------------------
def test_erk_by_default_with_every_layer_sparse(rigl):
    sparsifier = rigl(density=0.1)
    shapes = {name: tuple(layer.shape) for name, layer in sparsifier.layers.items()}
    assert list(shapes) == ["0", "2", "4"]  # the first and last layers are sparse too
    assert sparsifier.distribution == "erk"
    expected = distributions.resolve("erk", shapes, 0.1)
    assert {name: layer.target_density for name, layer in sparsifier.layers.items()} == expected
    assert len(set(expected.values())) == 3


def test_uniform_with_dense_first_layer_as_the_papers_uniform_runs(rigl):
    sparsifier = rigl(density=0.1, distribution="uniform", dense_first_layer=True)
    assert list(sparsifier.layers) == ["2", "4"]
    assert {layer.target_density for layer in sparsifier.layers.values()} == {0.1}


def test_uniform_keeps_the_first_layer_dense_by_default(rigl):
    sparsifier = rigl(density=0.1, distribution="uniform")
    assert list(sparsifier.layers) == ["2", "4"]
    sparsifier.remove()
    assert list(rigl(density=0.1, distribution="uniform", dense_first_layer=False).layers) == ["0", "2", "4"]


# ----------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------
def test_train_flops_add_the_amortised_dense_gradient(rigl):
    sparsifier = rigl(update_every=10)
    train_steps(sparsifier, 1)  # the engine learns the output sizes from a forward
    for stats in sparsifier.report().layers:
        nnz, numel = stats.nnz, stats.numel
        assert stats.forward_flops == 2 * nnz
        assert stats.backward_flops == 2 * nnz + 2 * nnz + (2 * numel) // 10
    assert rigl_train_flops(nnz=50, numel=1000, positions=9, update_every=100) == (900, 1800 + 180)


# ----------------------------------------------------------------------
# a forward that hides the dense gradient
# ----------------------------------------------------------------------
class MaskedGradientForward:
    """An extra plugin replacing Linear forwards with ``W * mask``: the weight gradient is masked."""

    @sparsecore.hookimpl
    def layer_forward(self, layer):
        module = layer.module

        def forward(x):
            return F.linear(x, module.weight * layer.mask, module.bias)

        return forward


def test_warns_once_when_a_replaced_forward_hides_the_dense_gradient(rigl):
    sparsifier = rigl(update_every=2, plugins=[MaskedGradientForward()])
    with pytest.warns(UserWarning, match=r"rigl: the gradient of layer '\d' is 0 at every inactive weight") as caught:
        train_steps(sparsifier, 6)  # three updates
    messages = [str(w.message) for w in caught if str(w.message).startswith("rigl:")]
    assert sorted(m.split("'")[1] for m in messages) == ["0", "2", "4"]  # once per layer, not per update


def test_no_warning_with_the_modules_own_forward():
    model = make_tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=RigLAlgorithm(update_every=2), density=0.3,
                                       total_steps=40, seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            train_steps(sparsifier, 6)
    finally:
        sparsifier.remove()


def test_n_m_runs_keep_exactly_n_active_in_every_group_after_each_update(rigl):
    sparsifier = rigl(pattern="2:4", density=None, update_every=2)
    layer_groups = {name: layer.shape[0] for name, layer in sparsifier.layers.items()}
    train_steps(sparsifier, 12)
    assert len(sparsifier.history) >= 3 and sum(u.grown for r in sparsifier.history for u in r.layers.values()) > 0
    for name, layer in sparsifier.layers.items():
        groups = layer.mask.reshape(layer_groups[name], -1, 4).sum(-1)
        assert bool((groups == 2).all()), name
