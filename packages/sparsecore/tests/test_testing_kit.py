"""Tests of the plugin-author kit ``sparsecore.testing`` (fixtures loaded through the pytest11 entry point)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo  # noqa: F401  (pytester's in-process runs drop modules first imported inside them,
from torch import nn  # and torch cannot import _dynamo twice; optimizer.step imports it lazily)

import sparsecore
from sparsecore.plugins import registry
from sparsecore.testing import make_sparsifier, make_tiny_model, tiny_batches, train_steps

pytest_plugins = ["pytester"]

# The inner runs keep file order (pytest-randomly, installed by `hatch test`, would shuffle it)
# and stay in one process.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist")


class Recorder:
    """Records the steps and epochs the engine reports."""

    name = "recorder"

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.epochs: list[int] = []

    @sparsecore.hookimpl
    def on_step(self, step: int) -> None:
        self.steps.append(step)

    @sparsecore.hookimpl
    def on_epoch_end(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_fixtures_come_from_the_pytest11_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sparsecore

        def test_tiny_model(tiny_model):
            shapes = [tuple(p.shape) for n, p in tiny_model.named_parameters() if n.endswith("weight")]
            assert shapes == [(32, 16), (24, 32), (4, 24)]

        def test_tiny_optimizer(tiny_model, tiny_optimizer):
            params = [p for g in tiny_optimizer.param_groups for p in g["params"]]
            assert [id(p) for p in params] == [id(p) for p in tiny_model.parameters()]
            assert tiny_optimizer.defaults["momentum"] == 0.9

        def test_sparsifier_factory(sparsifier_factory, tiny_model, tiny_optimizer):
            s = sparsifier_factory("static", model=tiny_model, optimizer=tiny_optimizer, density=0.25)
            assert isinstance(s, sparsecore.Sparsifier)
            assert {n: l.nnz for n, l in s.layers.items()} == {"0": 128, "2": 192, "4": 24}

        def test_train_steps(sparsifier_factory, train_steps):
            s = sparsifier_factory("set", density=0.5, update_every=2, total_steps=10)
            losses = train_steps(s, 5)
            assert len(losses) == 5 and s.step == 5
            assert len(s.history) == 2 and s.nnz == 688
        """
    )
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=4)


def test_register_algorithm_lasts_one_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import sparsecore
        from sparsecore.plugins import registry

        class Keep:
            @sparsecore.hookimpl
            def on_step(self, step):
                pass

        def test_registers(register_algorithm, sparsifier_factory):
            reg = register_algorithm("kit-test-algo", Keep)
            assert reg.distribution == "<test>"
            assert "kit-test-algo" in sparsecore.available_algorithms()
            assert isinstance(sparsifier_factory("kit-test-algo").algorithm, Keep)

        def test_removed_afterwards():
            assert "kit-test-algo" not in registry.algorithms

        def test_refuses_to_shadow_without_replace(register_algorithm):
            with pytest.raises(ValueError, match="'set' is already registered by 'sparsecore'"):
                register_algorithm("set", Keep)

        def test_replace_sets_aside(register_algorithm, sparsifier_factory):
            register_algorithm("set", Keep, replace=True)
            assert isinstance(sparsifier_factory("set").algorithm, Keep)

        def test_replaced_one_is_restored():
            assert registry.algorithms["set"].distribution == "sparsecore"
        """
    )
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=5)
    assert "kit-test-algo" not in registry.algorithms
    assert registry.algorithms["set"].distribution == "sparsecore"


def test_sparsifier_factory_detaches_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        KEEP = {}

        def test_build(sparsifier_factory, train_steps):
            KEEP["s"] = s = sparsifier_factory("static")
            train_steps(s, 1)
            assert s.step == 1

        def test_hooks_removed(train_steps):
            s = KEEP["s"]
            train_steps(s, 2)
            assert s.step == 1
        """
    )
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=2)


def test_make_tiny_model_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = make_tiny_model(), make_tiny_model()
    assert torch.rand(1).item() == expected_next.item()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(make_tiny_model(seed=1)[0].weight, a[0].weight)


def test_make_sparsifier_counts_and_plugins() -> None:
    rec = Recorder()
    s = make_sparsifier("static", density=0.25, plugins=[rec])
    assert s.nnz == 344 and s.seed == 0 and s.total_steps == 100
    train_steps(s, 3)
    assert rec.steps == [1, 2, 3]
    s.remove()


def test_make_sparsifier_rejects_optimizer_without_model(tiny_model: nn.Module) -> None:
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer was given without its model"):
        make_sparsifier("static", optimizer=opt)


def test_train_steps_is_deterministic_and_calls_epoch_end() -> None:
    rec = Recorder()
    s1 = make_sparsifier("static", plugins=[rec])
    losses1 = train_steps(s1, 6, epoch_every=2, seed=7)
    assert rec.epochs == [0, 1, 2] and rec.steps == [1, 2, 3, 4, 5, 6]
    s2 = make_sparsifier("static")
    assert train_steps(s2, 6, seed=7) == losses1
    s1.remove(), s2.remove()


def test_train_steps_masks_stay_applied() -> None:
    s = make_sparsifier("static", density=0.1)
    train_steps(s, 3)
    for layer in s.layers.values():
        assert int((layer.weight != 0).sum()) <= layer.nnz
        assert torch.all(layer.weight[~layer.mask] == 0)
    s.remove()


def test_train_steps_needs_input_shape_for_conv_models() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    s = make_sparsifier("static", model=model)
    with pytest.raises(ValueError, match="pass input_shape="):
        train_steps(s, 1)
    assert len(train_steps(s, 2, input_shape=(1, 6, 6))) == 2
    s.remove()


def test_train_steps_rejects_bad_arguments() -> None:
    s = make_sparsifier("static")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        train_steps(s, -1)
    with pytest.raises(ValueError, match="epoch_every must be a positive int"):
        train_steps(s, 1, epoch_every=0)
    s.remove()


def test_tiny_batches_are_seeded_and_fit_the_tiny_model() -> None:
    batches = tiny_batches(2, batch_size=5, seed=3)
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == (5, 16) and y.shape == (5,) and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) < 4
        assert make_tiny_model()(x).shape == (5, 4)
    again = tiny_batches(2, batch_size=5, seed=3)
    assert all(torch.equal(a, b) for pair, other in zip(batches, again) for a, b in zip(pair, other))
    assert not torch.equal(tiny_batches(1, batch_size=5, seed=4)[0][0], batches[0][0])


def test_the_conformance_suite_is_exported_lazily() -> None:
    from sparsecore import conformance, testing

    assert testing.AlgorithmConformance is conformance.AlgorithmConformance
    with pytest.raises(AttributeError, match="has no attribute 'AlgorithmConformence'"):
        testing.AlgorithmConformence  # noqa: B018
