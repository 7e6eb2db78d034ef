"""The conformance suite: contract tests every sparse-training algorithm gets by subclassing one class.

An algorithm's package adopts it in one test file::

    from sparsecore.testing import AlgorithmConformance
    from my_package import MyAlgorithm

    class TestMyAlgorithmConformance(AlgorithmConformance):
        algorithm = MyAlgorithm            # a factory (registered for each test) or a registered name
        options = {"update_every": 2}      # the factory's options: make updates happen in a short run
        grown_state_at_zero = False        # only where the algorithm legitimately differs

pytest then runs every ``test_*`` method below for that algorithm on a tiny
MLP (:func:`sparsecore.testing.make_tiny_model`, 12 optimizer steps in 4
epochs of 3). The class attributes say what the algorithm promises; each
defaults to the strictest promise, so an algorithm relaxes only what it
declares. A factory is registered under :attr:`AlgorithmConformance.algorithm_name`
through the ``register_algorithm`` fixture for every test, so the suite runs
the same with ``SPARSECORE_DISABLE_PLUGIN_AUTOLOAD=1``.

The contracts checked:

* every layer's number of active weights equals its count in the initial
  masks (or what :meth:`AlgorithmConformance.expected_nnz` declares) after
  every optimizer step and every epoch end, so after every update;
* initial masks at the target density (``layer.active_count(target_density)``);
* inactive weights exactly 0 and their optimizer state 0 after every step,
  with SGD (momentum), Adam and AdamW (weight decay);
* newly grown weights and their optimizer state start at 0;
* topology updates regrow as many weights as they remove (``redistribute``'s budget);
* the topology changes during training, or never does, as declared;
* a checkpoint (model, optimizer and sparsifier state dicts, through
  ``torch.save`` / ``torch.load(weights_only=True)``) resumes bit-exactly;
* the same seed gives the same masks;
* ``block=`` and ``pattern="N:M"`` (``"2:4"`` and ``"1:4"``) are honoured
  when the algorithm lists ``"block"`` / ``"n:m"`` in its ``patterns`` (every
  group holds exactly N, or the count the algorithm declares with
  ``nm_group_count``, after set-up, every step and every epoch end) and
  refused with a clear error naming the pattern otherwise;
* a run without ``total_steps`` works, or is refused with an error naming
  ``total_steps``, as declared.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from sparsecore import selection
from sparsecore.errors import ConfigurationError
from sparsecore.hookspecs import hookimpl
from sparsecore.selection import NMPattern
from sparsecore.sparsifier import Sparsifier
from sparsecore.testing import make_tiny_model, train_steps
from sparsecore.topology import nm_group_count

#: Optimizers every weight-masking algorithm is run with: name -> builder over a model's parameters.
OPTIMIZERS: Mapping[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda model: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
    "adam": lambda model: torch.optim.Adam(model.parameters(), lr=1e-2),
    "adamw-weight-decay": lambda model: torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
}

#: Seed of the data of optimizer step ``s`` (counted from 0): ``DATA_SEED + s``, so a resumed run sees the same data.
DATA_SEED = 1000


class AlgorithmConformance:
    """Contract tests of one algorithm; subclass it as ``Test...`` and set the class attributes.

    Attributes:
        algorithm: a factory (``factory(**options)`` returns the algorithm's
            plugin object, e.g. its class), registered for each test under
            :attr:`algorithm_name`; or the name of an algorithm registered
            already (then entry-point loading must be on, unless it is a
            built-in).
        algorithm_name: the name to register a factory under; default the
            factory's ``name`` attribute.
        options: options of the algorithm's factory. Choose them so that
            topology updates happen within the short run (``update_every=2``
            or the default per-epoch updates).
        setup_kwargs: more :class:`~sparsecore.Sparsifier` keywords, e.g.
            ``{"data": tiny_batches()}`` for an algorithm that scores data
            before training, or ``{"distribution": "erk"}``.
        density: the run's overall density.
        steps_per_epoch: optimizer steps per epoch of the run.
        epochs: epochs of the run (``total_steps = steps_per_epoch * epochs``).
        checkpoint_after: optimizer steps trained before the checkpoint of the
            round-trip test (mid-epoch by default).
        block: the block shape of the block-sparse run (it must divide every
            sparse layer of :meth:`make_model`).
        nm_patterns: the patterns of the N:M runs, each run in turn (every
            sparse layer's input dimension must divide by each M); a run's
            density is N/M. Default ``("2:4", "1:4")``.
        update_rate: the prune rate of the extra update the budget test asks for.
        initial_at_target_density: the initial masks hold exactly
            ``layer.active_count(layer.target_density)`` weights per layer.
            ``False`` for algorithms that set ``sets_initial_density = True``
            (DSD starts dense, global SNIP chooses its own per-layer counts).
        nnz_scope: ``"layer"``: every layer keeps its expected count exactly;
            ``"total"``: layers may trade weights (redistribution across
            layers) and only the total is compared, within :attr:`total_nnz_tolerance`.
        total_nnz_tolerance: with ``nnz_scope="total"``, how many weights the
            total may differ from the expected total (0: exact); override
            :meth:`nnz_tolerance` for a tolerance that depends on the run.
        masks_weights: inactive weights are exactly 0 after every step
            (``False``: the algorithm keeps dense weights, like SWAT).
        masks_optimizer_state: the optimizer state of inactive weights is 0
            after every step.
        grows_at_zero: weights activated by an update (or any mask change) start at 0.
        grown_state_at_zero: the optimizer state of weights activated by an
            update starts at 0.
        keeps_budget: every topology update regrows exactly as many weights as
            it removes (``False`` for an algorithm whose own plan regrows a
            different total, like sparse momentum's drift correction).
        changes_topology: the masks change during the run (``False``: they
            never change, and no update is recorded).
        manual_updates: the algorithm accepts an ``update_topology`` call
            outside its schedule; the grown-weights and budget tests then ask
            for one more update after the run (``False``, e.g. RigL, which
            grows by the dense gradient it keeps on its own update steps:
            those tests check the scheduled updates only).
        supports_block: whether ``block=`` runs are accepted; ``None`` reads
            it from the algorithm's ``patterns``. Either way the test checks
            that the algorithm's ``patterns`` agree.
        needs_total_steps: a run without ``total_steps`` is refused with an
            error naming ``total_steps`` (``False``: such a run trains).
        input_shape: the shape of one sample, for models whose first weighted
            module is not ``nn.Linear``.
        batch_size: samples per optimizer step.
    """

    algorithm: ClassVar[str | Callable[..., Any] | None] = None
    algorithm_name: ClassVar[str | None] = None
    options: ClassVar[Mapping[str, Any]] = {}
    setup_kwargs: ClassVar[Mapping[str, Any]] = {}
    density: ClassVar[float] = 0.5
    steps_per_epoch: ClassVar[int] = 3
    epochs: ClassVar[int] = 4
    checkpoint_after: ClassVar[int] = 4
    block: ClassVar[tuple[int, int]] = (4, 4)
    nm_patterns: ClassVar[tuple[str, ...]] = ("2:4", "1:4")
    update_rate: ClassVar[float] = 0.3
    initial_at_target_density: ClassVar[bool] = True
    nnz_scope: ClassVar[str] = "layer"
    total_nnz_tolerance: ClassVar[int] = 0
    masks_weights: ClassVar[bool] = True
    masks_optimizer_state: ClassVar[bool] = True
    grows_at_zero: ClassVar[bool] = True
    grown_state_at_zero: ClassVar[bool] = True
    keeps_budget: ClassVar[bool] = True
    changes_topology: ClassVar[bool] = True
    manual_updates: ClassVar[bool] = True
    supports_block: ClassVar[bool | None] = None
    needs_total_steps: ClassVar[bool] = False
    input_shape: ClassVar[tuple[int, ...] | None] = None
    batch_size: ClassVar[int] = 8

    # ------------------------------------------------------------------
    # set-up: what a subclass may override
    # ------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _conformance_registration(self, register_algorithm: Callable[..., Any]) -> Iterator[None]:
        """Register a factory :attr:`algorithm` for the test; detach every sparsifier built after it."""
        self._built: list[Sparsifier] = []
        if self.nnz_scope not in ("layer", "total"):
            raise TypeError(f"{type(self).__name__}.nnz_scope must be 'layer' or 'total', got {self.nnz_scope!r}")
        if self.algorithm is None:
            raise TypeError(f"{type(self).__name__}: set the class attribute algorithm to the algorithm's factory "
                            "(e.g. its class) or its registered name")
        if not isinstance(self.algorithm, str):
            register_algorithm(self.registered_name(), self.algorithm, replace=True)
        yield
        for sparsifier in self._built:
            sparsifier.remove()

    def registered_name(self) -> str:
        """The algorithm's name in runs: :attr:`algorithm` itself, :attr:`algorithm_name` or the factory's ``name``."""
        if isinstance(self.algorithm, str):
            return self.algorithm
        name = self.algorithm_name or getattr(self.algorithm, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: the factory {self.algorithm!r} has no str attribute 'name'; "
                            "set algorithm_name")
        return name

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: ``steps_per_epoch * epochs``."""
        return self.steps_per_epoch * self.epochs

    def make_model(self, seed: int = 0) -> nn.Module:
        """The model of every run (default :func:`~sparsecore.testing.make_tiny_model`)."""
        return make_tiny_model(seed)

    def build(self, *, model: nn.Module | None = None, optimizer: str | torch.optim.Optimizer = "sgd-momentum",
              seed: int = 0, **overrides: Any) -> Sparsifier:
        """A sparsifier of the algorithm with the class's options; detached after the test.

        Args:
            model: the model; a fresh :meth:`make_model` when omitted.
            optimizer: a key of :data:`OPTIMIZERS` or an optimizer over ``model``.
            seed: the sparsifier's seed.
            **overrides: Sparsifier keywords replacing the class's (``total_steps``, ``block``, ...).
        """
        model = self.make_model() if model is None else model
        if isinstance(optimizer, str):
            optimizer = OPTIMIZERS[optimizer](model)
        kwargs = {"density": self.density, "total_steps": self.total_steps, **self.setup_kwargs, **overrides}
        sparsifier = Sparsifier(model, optimizer, algorithm=self.registered_name(),
                                algorithm_options=dict(self.options), seed=seed, **kwargs)
        self._built.append(sparsifier)
        return sparsifier

    def train(self, sparsifier: Sparsifier, steps: int,
              observe: Callable[[Sparsifier, str], None] | None = None) -> None:
        """Train ``steps`` optimizer steps, ending an epoch every :attr:`steps_per_epoch` steps.

        The data of each step depends only on the step's number, so a resumed
        run trains on the same batches. ``observe(sparsifier, when)`` runs
        after every step and every epoch end.
        """
        for _ in range(steps):
            train_steps(sparsifier, 1, batch_size=self.batch_size, input_shape=self.input_shape,
                        seed=DATA_SEED + sparsifier.step)
            if observe is not None:
                observe(sparsifier, f"after optimizer step {sparsifier.step}")
            if sparsifier.step % self.steps_per_epoch == 0:
                epoch = sparsifier.step // self.steps_per_epoch - 1
                sparsifier.epoch_end(epoch)
                if observe is not None:
                    observe(sparsifier, f"after epoch {epoch} (step {sparsifier.step})")

    def expected_nnz(self, sparsifier: Sparsifier, initial: Mapping[str, int]) -> dict[str, int]:
        """The number of active weights each layer must hold now; default: its count in the initial masks.

        Override it for an algorithm whose counts change by design (DSD's
        phases); with :attr:`nnz_scope` ``"total"`` only the sum is compared.

        Args:
            sparsifier: the run, as it is now.
            initial: every layer's number of active weights right after set-up.
        """
        return dict(initial)

    def nnz_tolerance(self, sparsifier: Sparsifier) -> int:
        """With ``nnz_scope="total"``, how far the total may be from the expected one (:attr:`total_nnz_tolerance`)."""
        return self.total_nnz_tolerance

    # ------------------------------------------------------------------
    # the checks run after every step and epoch end
    # ------------------------------------------------------------------
    def check_nnz(self, sparsifier: Sparsifier, initial: Mapping[str, int], when: str) -> None:
        """Every layer's mask holds the expected count (or the total does, with ``nnz_scope="total"``)."""
        expected = self.expected_nnz(sparsifier, initial)
        actual = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        if self.nnz_scope == "layer":
            assert actual == expected, (f"{self.registered_name()} {when}: active weights per layer {actual}, "
                                        f"expected {expected}")
        else:
            gap, tolerance = sum(actual.values()) - sum(expected.values()), self.nnz_tolerance(sparsifier)
            assert abs(gap) <= tolerance, (
                f"{self.registered_name()} {when}: {sum(actual.values())} active weights in all, expected "
                f"{sum(expected.values())} (tolerance {tolerance}; per layer {actual})")

    def check_inactive(self, sparsifier: Sparsifier, when: str) -> None:
        """Inactive weights are 0 (:attr:`masks_weights`), their optimizer state too (:attr:`masks_optimizer_state`)."""
        for name, layer in sparsifier.layers.items():
            if self.masks_weights:
                alive = int((layer.weight.detach()[~layer.mask] != 0).sum())
                assert alive == 0, f"{self.registered_name()} {when}: layer {name!r} has {alive} inactive weights != 0"
            if self.masks_optimizer_state:
                for key, value in sparsifier.optimizer_state(layer).items():
                    alive = int((value[~layer.mask] != 0).sum())
                    assert alive == 0, (f"{self.registered_name()} {when}: layer {name!r}: optimizer state {key!r} "
                                        f"is non-zero at {alive} inactive weights")

    def check_grown(self, sparsifier: Sparsifier, previous: Mapping[str, torch.Tensor], when: str) -> int:
        """Weights activated since ``previous`` start at 0 with zero optimizer state, as declared; returns how many."""
        grown_total = 0
        for name, layer in sparsifier.layers.items():
            grown = layer.mask & ~previous[name]
            count = int(grown.sum())
            grown_total += count
            if not count:
                continue
            if self.grows_at_zero:
                alive = int((layer.weight.detach()[grown] != 0).sum())
                assert alive == 0, (f"{self.registered_name()} {when}: layer {name!r}: {alive} of {count} newly "
                                    "activated weights are not 0")
            if self.grown_state_at_zero:
                for key, value in sparsifier.optimizer_state(layer).items():
                    alive = int((value[grown] != 0).sum())
                    assert alive == 0, (f"{self.registered_name()} {when}: layer {name!r}: optimizer state {key!r} "
                                        f"is non-zero at {alive} of {count} newly activated weights")
        return grown_total

    def _observer(self, initial: Mapping[str, int], *, nnz: bool = False, inactive: bool = False,
                  grown: bool = False) -> tuple[Callable[[Sparsifier, str], None], dict[str, Any]]:
        """An ``observe`` for :meth:`train` running the chosen checks; its record counts mask changes and grown weights.

        Each contract test runs only its own checks, so a broken contract fails its own test.
        """
        record: dict[str, Any] = {"changes": 0, "grown": 0, "masks": None}

        def observe(sparsifier: Sparsifier, when: str) -> None:
            masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
            previous = record["masks"]
            if previous is not None:
                if any(not torch.equal(masks[name], previous[name]) for name in masks):
                    record["changes"] += 1
                if grown:
                    record["grown"] += self.check_grown(sparsifier, previous, when)
            if nnz:
                self.check_nnz(sparsifier, initial, when)
            if inactive:
                self.check_inactive(sparsifier, when)
            record["masks"] = masks

        return observe, record

    def _full_run(self, sparsifier: Sparsifier, **checks: bool) -> dict[str, Any]:
        """Train the whole run, observing after set-up, every step and every epoch end with ``checks``."""
        initial = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        observe, record = self._observer(initial, **checks)
        observe(sparsifier, "after set-up")
        self.train(sparsifier, self.total_steps, observe)
        return record

    # ------------------------------------------------------------------
    # the contract tests
    # ------------------------------------------------------------------
    def test_initial_masks_hold_the_target_counts(self) -> None:
        """Each layer starts with ``active_count(target_density)`` weights (unless declared otherwise)."""
        sparsifier = self.build()
        counts = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        targets = {name: layer.active_count(layer.target_density) for name, layer in sparsifier.layers.items()}
        if self.initial_at_target_density:
            assert counts == targets, f"initial active weights {counts}, target counts {targets}"
        else:
            declared = getattr(sparsifier.algorithm, "sets_initial_density", False)
            assert declared is True, (f"{self.registered_name()}: the suite is told the initial masks are not at the "
                                      "target density, but the algorithm does not declare sets_initial_density = True")
        self.check_nnz(sparsifier, counts, "after set-up")

    def test_nonzeros_stay_exact_through_training(self) -> None:
        """After set-up, every step and every epoch end, each layer holds the declared number of active weights."""
        self._full_run(self.build(), nnz=True)

    @pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
    def test_no_inactive_weight_is_revived_by_the_optimizer(self, optimizer: str) -> None:
        """Momentum, Adam moments and decoupled weight decay never make an inactive weight (or its state) non-zero."""
        if not self.masks_weights:
            pytest.skip(f"{self.registered_name()} keeps dense weights (masks_weights = False)")
        self._full_run(self.build(optimizer=optimizer), inactive=True)

    def test_grown_weights_start_at_zero(self) -> None:
        """Weights activated by an update start at 0, their optimizer state too (as declared)."""
        if not (self.grows_at_zero or self.grown_state_at_zero):
            pytest.skip(f"{self.registered_name()} declares neither grows_at_zero nor grown_state_at_zero")
        sparsifier = self.build()
        record = self._full_run(sparsifier, grown=True)
        grown = 0
        if self.manual_updates:
            previous = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
            sparsifier.update_topology(self.update_rate)  # one more, right after the last step's optimizer update
            grown = self.check_grown(sparsifier, previous, f"after update_topology({self.update_rate})")
        if self.changes_topology:
            assert record["grown"] + grown > 0, f"{self.registered_name()} grew no weight in the whole run"

    def test_topology_changes_as_declared(self) -> None:
        """A dynamic algorithm changes its masks during the run; a fixed one never does nor records an update."""
        sparsifier = self.build()
        before = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        record = self._full_run(sparsifier)
        if self.changes_topology:
            assert record["changes"] > 0, (f"{self.registered_name()}: no mask changed in {self.total_steps} steps "
                                           f"with options {dict(self.options)}; choose options that update in a "
                                           "short run, or declare changes_topology = False")
        else:
            changed = [name for name, layer in sparsifier.layers.items() if not torch.equal(layer.mask, before[name])]
            assert record["changes"] == 0 and not changed, f"{self.registered_name()}: masks of {changed} changed"
            updates = [report.step for report in sparsifier.history if report.reason == "update"]
            assert updates == [], f"{self.registered_name()}: topology updates after steps {updates}"

    def test_updates_keep_the_budget(self) -> None:
        """Every topology update (scheduled, and one asked for at the end) regrows exactly what it removes."""
        if not self.keeps_budget:
            pytest.skip(f"{self.registered_name()} declares keeps_budget = False (its plan regrows its own total)")
        recorder = _BudgetRecorder()
        sparsifier = self.build(plugins=[recorder])
        self._full_run(sparsifier)
        if self.manual_updates:
            sparsifier.update_topology(self.update_rate)
        updates = [report for report in sparsifier.history if report.reason == "update"]
        for step, removed, regrown in recorder.updates:
            assert regrown == removed, (f"{self.registered_name()}: the update after step {step} removed {removed} "
                                        f"weights and regrew {regrown}")
        for report in updates:
            net = sum(layer.grown - layer.pruned for layer in report.layers.values())
            assert net == 0, (f"{self.registered_name()}: the update after step {report.step} changed the number of "
                              f"active weights by {net:+d}")
        if self.manual_updates:
            assert recorder.updates and recorder.updates[-1][1] > 0, (
                f"update_topology({self.update_rate}) asked to remove nothing")
        else:
            assert any(removed > 0 for _, removed, _ in recorder.updates), (
                f"{self.registered_name()}: no scheduled update removed a weight in {self.total_steps} steps")

    def test_checkpoint_round_trip_is_bit_exact(self) -> None:
        """Train, checkpoint, train on; fresh objects loading the checkpoint train to identical weights and masks."""
        first = self.build()
        self.train(first, self.checkpoint_after)
        buffer = io.BytesIO()
        torch.save({"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(),
                    "sparsifier": first.state_dict()}, buffer)
        remaining = self.total_steps - self.checkpoint_after
        self.train(first, remaining)

        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        resumed = self.build(model=self.make_model(seed=1), seed=1)
        resumed.model.load_state_dict(checkpoint["model"])
        resumed.optimizer.load_state_dict(checkpoint["optimizer"])
        resumed.load_state_dict(checkpoint["sparsifier"])
        self.train(resumed, remaining)

        assert resumed.step == first.step
        for name, layer in first.layers.items():
            assert torch.equal(resumed.layers[name].mask, layer.mask), f"layer {name!r}: masks differ after resuming"
        for (name, a), b in zip(first.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{name} differs after resuming (max |diff| {float((a - b).abs().max())})"
        after_checkpoint = [_summary(report) for report in first.history if report.step > self.checkpoint_after]
        assert [_summary(report) for report in resumed.history] == after_checkpoint, (
            "the resumed run recorded other topology updates than the uninterrupted one")

    def test_same_seed_gives_the_same_masks(self) -> None:
        """Two runs with the same seed, model and data have identical masks at every step."""
        seen: list[list[dict[str, torch.Tensor]]] = []
        for _ in range(2):
            masks: list[dict[str, torch.Tensor]] = []

            def keep(sparsifier: Sparsifier, when: str, masks: list[dict[str, torch.Tensor]] = masks) -> None:
                masks.append({name: layer.mask.clone() for name, layer in sparsifier.layers.items()})

            sparsifier = self.build(model=self.make_model(), seed=7)
            keep(sparsifier, "after set-up")
            self.train(sparsifier, self.total_steps, keep)
            seen.append(masks)
        for k, (a, b) in enumerate(zip(*seen, strict=True)):
            differ = [name for name in a if not torch.equal(a[name], b[name])]
            assert not differ, f"observation {k}: masks of {differ} differ between two runs with the same seed"

    def test_block_pattern_is_honoured_or_refused(self) -> None:
        """``block=`` works in whole blocks when ``"block"`` is in the algorithm's patterns, else a clear error."""
        patterns = self._patterns()
        listed = "block" in patterns
        if self.supports_block is not None:
            assert self.supports_block == listed, (f"{self.registered_name()}: supports_block = {self.supports_block}"
                                                   f" but the algorithm's patterns are {patterns}")
        if not listed:
            with pytest.raises(ConfigurationError, match=r"does not support block-sparse runs.*drop block="):
                self.build(block=self.block)
            return
        sparsifier = self.build(block=self.block)
        initial = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        observe, _ = self._observer(initial, nnz=True)

        def observe_blocks(s: Sparsifier, when: str) -> None:
            observe(s, when)
            for name, layer in s.layers.items():
                assert selection.is_block_structured(layer.mask, self.block), (
                    f"{self.registered_name()} {when}: layer {name!r} is not made of whole {self.block} blocks")

        observe_blocks(sparsifier, "after set-up")
        self.train(sparsifier, self.total_steps, observe_blocks)

    def test_nm_pattern_is_honoured_or_refused(self) -> None:
        """Each of :attr:`nm_patterns` keeps N active weights per group when ``"n:m"`` is in the patterns, else a
        clear error naming the algorithm and the pattern.

        An algorithm that declares another count per group
        (:meth:`sparsecore.Algorithm.nm_group_count`, gradual N:M pruning) is
        held to that count; a layer may also be wholly dense (an algorithm that
        trains dense before pruning once), as the engine accepts.
        """
        listed = "n:m" in self._patterns()
        for spec in self.nm_patterns:
            if not listed:
                with pytest.raises(ConfigurationError, match=rf"'{re.escape(self.registered_name())}' does not "
                                                             rf"support N:M runs such as pattern="
                                                             rf"'{NMPattern.parse(spec)}'.*drop pattern="):
                    self.build(pattern=spec, density=None, distribution=None)
                continue
            self._nm_run(NMPattern.parse(spec))

    def _nm_run(self, nm: NMPattern) -> None:
        """Train a whole ``nm`` run, checking every group's count after set-up, every step and every epoch end."""
        sparsifier = self.build(pattern=str(nm), density=None, distribution=None)
        initial = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        observe, _ = self._observer(initial, nnz=True)

        def observe_groups(s: Sparsifier, when: str) -> None:
            observe(s, when)
            for name, layer in s.layers.items():
                k = nm_group_count(s, layer)
                wrong = int((nm.group_counts(layer.mask) != k).sum())
                assert not wrong or bool(layer.mask.all()), (
                    f"{self.registered_name()} {when}: layer {name!r}: {wrong} groups do not hold exactly {k} "
                    f"active weights ({nm} run)")

        observe_groups(sparsifier, "after set-up")
        self.train(sparsifier, self.total_steps, observe_groups)

    def _patterns(self) -> tuple[str, ...]:
        """The ``patterns`` the algorithm's plugin object declares (read from a run built for it)."""
        sparsifier = self.build()
        patterns = tuple(getattr(sparsifier.algorithm, "patterns", ("unstructured",)))
        sparsifier.remove()
        return patterns

    def test_total_steps_requirement(self) -> None:
        """A run without ``total_steps`` trains, or is refused naming ``total_steps`` when the algorithm needs it."""
        if self.needs_total_steps:
            with pytest.raises(ConfigurationError, match="total_steps"):
                self.build(total_steps=None)
            return
        sparsifier = self.build(total_steps=None)
        initial = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        observe, _ = self._observer(initial, nnz=True)
        self.train(sparsifier, self.steps_per_epoch * 2, observe)


class _BudgetRecorder:
    """An extra plugin recording, per topology update, the weights removed and the grow counts asked for.

    It answers nothing (``select_grow`` returns ``None``), so the run is unchanged.
    """

    name = "conformance-budget-recorder"

    def __init__(self) -> None:
        self.updates: list[tuple[int, int, int]] = []  # (step, removed, regrown)
        self._current: Any = None

    @hookimpl
    def select_grow(self, n: int, update: Any) -> None:
        """Add ``n`` to the regrowth of ``update`` (the first call of an update records what it removed)."""
        if update is not self._current:
            self._current = update
            self.updates.append((update.step, sum(update.removed.values()), 0))
        step, removed, regrown = self.updates[-1]
        self.updates[-1] = (step, removed, regrown + n)


def _summary(report: Any) -> tuple[Any, ...]:
    """A topology report as plain values: step, reason and per-layer pruned/grown counts."""
    return report.step, report.reason, {name: (layer.pruned, layer.grown) for name, layer in report.layers.items()}
