"""Tests of the conformance suite itself: each contract test fails for an algorithm that breaks its contract.

Deliberately broken algorithms run through ``AlgorithmConformance`` in an inner
pytest session; every test is expected to pass except exactly the ones whose
contract the algorithm breaks.
"""

from __future__ import annotations

import pytest
import torch._dynamo  # noqa: F401  (pytester's in-process runs drop modules first imported inside them)

from sparsecore.plugins import registry

pytest_plugins = ["pytester"]

# The inner runs keep file order and stay in one process.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist")

ALL_TESTS = {
    "test_initial_masks_hold_the_target_counts",
    "test_nonzeros_stay_exact_through_training",
    "test_no_inactive_weight_is_revived_by_the_optimizer[sgd-momentum]",
    "test_no_inactive_weight_is_revived_by_the_optimizer[adam]",
    "test_no_inactive_weight_is_revived_by_the_optimizer[adamw-weight-decay]",
    "test_grown_weights_start_at_zero",
    "test_topology_changes_as_declared",
    "test_updates_keep_the_budget",
    "test_checkpoint_round_trip_is_bit_exact",
    "test_same_seed_gives_the_same_masks",
    "test_block_pattern_is_honoured_or_refused",
    "test_nm_pattern_is_honoured_or_refused",
    "test_total_steps_requirement",
}

BROKEN_ALGORITHMS = '''
import torch
import sparsecore
from sparsecore import UpdatePlan, hookimpl, selection
from sparsecore.algorithms import SetAlgorithm
from sparsecore.testing import AlgorithmConformance


class StepSet(SetAlgorithm):
    """A correct algorithm: set with updates every 2 steps (the base of the broken ones)."""

    name = "step-set"

    def __init__(self):
        super().__init__(update_every=2)


class UnmaskedMomentum(StepSet):
    """Gradients and momentum of inactive weights are kept: grown weights inherit momentum."""

    name = "unmasked-momentum"
    masking_policy = sparsecore.MaskingPolicy(mask_weights=True, mask_gradients=False,
                                              mask_optimizer_state=False, reset_grown_state=False)


class Shrinking(StepSet):
    """Its plan regrows nothing: every update loses weights."""

    name = "shrinking"

    @hookimpl
    def plan_update(self, layers, update):
        return UpdatePlan(prune={n: int(update.rate * l.nnz) for n, l in layers.items()},
                          grow={n: 0 for n in layers})


class PrivateGenerator(StepSet):
    """Grows at random from a generator of its own that its state_dict leaves out."""

    name = "private-generator"

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    @hookimpl
    def select_grow(self, layer, n):
        return selection.random_choice(~layer.mask, n, self.generator, layer.pattern)


class GlobalRandom(StepSet):
    """Grows at random from torch's global generator, not the sparsifier's."""

    name = "global-random"
    patterns = ("unstructured",)

    @hookimpl
    def select_grow(self, layer, n):
        candidates = (~layer.mask).flatten().nonzero().squeeze(1)
        chosen = torch.zeros(layer.capacity, dtype=torch.bool)
        chosen[candidates[torch.randperm(len(candidates))[:n]]] = True
        return chosen.view(layer.shape)


class BlockBlind(StepSet):
    """Lists "block" in its patterns but grows single weights."""

    name = "block-blind"
    patterns = ("unstructured", "block")

    @hookimpl
    def select_grow(self, sparsifier, layer, n):
        return selection.random_choice(~layer.mask, n, sparsifier.generator)


class NMBlind(BlockBlind):
    """Lists "n:m" in its patterns but grows anywhere in the layer."""

    name = "nm-blind"
    patterns = ("unstructured", "n:m")


class DenseWeights(StepSet):
    """Keeps inactive weights and their state alive (nothing masked)."""

    name = "dense-weights"
    masking_policy = sparsecore.MaskingPolicy(mask_weights=False, mask_gradients=False,
                                              mask_optimizer_state=False, reset_grown_state=False)


class TestCorrect(AlgorithmConformance):
    algorithm = StepSet
    needs_total_steps = True


class TestUnmaskedMomentum(AlgorithmConformance):
    algorithm = UnmaskedMomentum
    needs_total_steps = True
    masks_optimizer_state = False  # declared: only the grown state is wrong


class TestShrinking(AlgorithmConformance):
    algorithm = Shrinking
    needs_total_steps = True


class TestPrivateGenerator(AlgorithmConformance):
    algorithm = PrivateGenerator
    needs_total_steps = True


class TestGlobalRandom(AlgorithmConformance):
    algorithm = GlobalRandom
    needs_total_steps = True


class TestBlockBlind(AlgorithmConformance):
    algorithm = BlockBlind
    needs_total_steps = True


class TestNMBlind(AlgorithmConformance):
    algorithm = NMBlind
    needs_total_steps = True


class TestDenseWeights(AlgorithmConformance):
    algorithm = DenseWeights
    needs_total_steps = True


class TestStaticMisdeclared(AlgorithmConformance):
    """static declared as dynamic, block-less and needing total_steps."""

    algorithm = "static"
    supports_block = False
    needs_total_steps = True
'''

#: Per inner test class, the tests that must fail; every other test passes.
EXPECTED_FAILURES = {
    "TestCorrect": set(),
    "TestUnmaskedMomentum": {"test_grown_weights_start_at_zero"},
    "TestShrinking": {"test_nonzeros_stay_exact_through_training", "test_updates_keep_the_budget",
                      "test_grown_weights_start_at_zero", "test_block_pattern_is_honoured_or_refused",
                      "test_nm_pattern_is_honoured_or_refused"},
    "TestPrivateGenerator": {"test_checkpoint_round_trip_is_bit_exact"},
    "TestGlobalRandom": {"test_same_seed_gives_the_same_masks", "test_checkpoint_round_trip_is_bit_exact"},
    "TestBlockBlind": {"test_block_pattern_is_honoured_or_refused"},
    "TestNMBlind": {"test_nm_pattern_is_honoured_or_refused"},
    "TestDenseWeights": {"test_grown_weights_start_at_zero", *(t for t in ALL_TESTS if "revived" in t)},
    "TestStaticMisdeclared": {"test_topology_changes_as_declared", "test_block_pattern_is_honoured_or_refused",
                              "test_total_steps_requirement"},
}


def _outcomes(reprec: pytest.HookRecorder) -> dict[str, dict[str, str]]:
    """Inner class name -> test name -> outcome of its call phase (or of set-up when that failed)."""
    out: dict[str, dict[str, str]] = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            _, cls, test = report.nodeid.split("::")
            out.setdefault(cls, {})[test] = report.outcome
    return out


@pytest.mark.slow
def test_each_contract_test_fails_exactly_for_the_algorithms_that_break_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN_ALGORITHMS)
    outcomes = _outcomes(pytester.inline_run(*INNER_ARGS))
    assert set(outcomes) == set(EXPECTED_FAILURES)
    for cls, expected in EXPECTED_FAILURES.items():
        assert set(outcomes[cls]) == ALL_TESTS, cls
        failed = {test for test, outcome in outcomes[cls].items() if outcome == "failed"}
        assert failed == expected, f"{cls}: failed {sorted(failed)}, expected {sorted(expected)}"
        assert all(outcomes[cls][t] == "passed" for t in ALL_TESTS - expected), (cls, outcomes[cls])
    for name in ("step-set", "shrinking", "block-blind"):
        assert name not in registry.algorithms  # registered per test only


def test_failures_name_the_algorithm_and_the_numbers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN_ALGORITHMS)
    result = pytester.runpytest(*INNER_ARGS, "-k", "TestShrinking and (budget or nonzeros)")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*shrinking after optimizer step 2: active weights per layer {'0': 185, '2': 277, '4': 35}, "
        "expected {'0': 256, '2': 384, '4': 48}",
        "*shrinking: the update after step 2 removed 191 weights and regrew 0",
    ], consecutive=False)


def test_declarations_are_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from sparsecore.testing import AlgorithmConformance

        class TestNoAlgorithm(AlgorithmConformance):
            pass

        class TestBadScope(AlgorithmConformance):
            algorithm = "static"
            nnz_scope = "layers"

        class TestNamelessFactory(AlgorithmConformance):
            algorithm = staticmethod(lambda: None)
        """
    )
    result = pytester.runpytest(*INNER_ARGS, "-k", "test_initial_masks")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([
        "*TestNoAlgorithm: set the class attribute algorithm to the algorithm's factory*",
        "*TestBadScope.nnz_scope must be 'layer' or 'total', got 'layers'*",
        "*has no str attribute 'name'; set algorithm_name*",
    ])


@pytest.mark.slow
def test_a_factory_runs_the_suite_with_plugin_autoload_disabled(pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        """
        import sparsecore
        from sparsecore.plugins import registry
        from sparsecore.testing import AlgorithmConformance


        class Growth(sparsecore.Algorithm):
            name = "not-installed-growth"

            def __init__(self, update_every=2):
                self.schedule = sparsecore.UpdateSchedule(0.3, "constant", update_every=update_every,
                                                          owner=self.name)


        def test_autoload_is_off():
            registry.load()
            assert registry.autoload is False
            assert "not-installed-growth" not in registry.algorithms


        class TestGrowthConformance(AlgorithmConformance):
            algorithm = Growth
            options = {"update_every": 2}
        """
    )
    result = pytester.runpytest_subprocess(*INNER_ARGS)
    result.assert_outcomes(passed=len(ALL_TESTS) + 1)
