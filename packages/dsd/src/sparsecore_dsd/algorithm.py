"""Dense-Sparse-Dense training (Han et al., ICLR 2017) as a sparsecore algorithm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from sparsecore import Algorithm, CheckpointError, ConfigurationError, distributions, hookimpl, selection
from sparsecore_dsd.schedule import DENSE, SPARSE, STEP, PhaseSchedule, phase_names

STATE_FORMAT = 1


class DSDAlgorithm(Algorithm):
    """Dense-Sparse-Dense training: train dense, prune and retrain sparse, re-densify and retrain.

    Phases (Han et al. 2017, Alg. 1):

    * **dense**: every mask is all-True; the model trains normally.
    * **sparse**: per sparse layer, the ``round(N * density)`` weights of largest
      ``|W|`` are kept (ties go to the lower flat index, so the count is exact
      even with equal magnitudes), the rest are set to 0. With the engine's
      ``block=(r, c)`` whole blocks are kept instead, ranked by the sum of
      ``|W|`` in the block, ``layer.active_count(density)`` weights in all.
      The mask stays fixed for the whole phase; gradients and optimizer state
      of pruned weights are zero, so they stay at exactly 0.
    * **redense**: the masks become all-True again; pruned weights restart from
      exactly 0, survivors keep their values, all weights train with the
      learning rate multiplied by ``redense_lr_scale`` (relative to the sparse
      phase's rate).

    With ``iterations=[d1, d2, ...]`` the sparse/redense pair repeats once per
    entry, each sparse phase recomputing its mask from the current ``|W|`` at
    kept fraction ``d_i`` (DeepSpeech: ``[0.5, 0.75]``, i.e. 50 % then 25 %
    sparsity).

    **Density.** The engine's ``density`` is the fraction of weights *kept* in
    the sparse phase, spread over the layers by the engine's distribution
    (``layer.target_density``). Without an explicit ``density`` DSD asks the
    engine for 0.7, the paper's 30 % sparsity for CNNs. A first prunable layer
    that is a convolution stays dense by default (engine default
    ``dense_first_layer="conv"``: the paper never prunes the first conv); an
    MLP's first Linear, which holds most of its weights, is pruned. Pass
    ``dense_first_layer=True`` or ``False`` to the engine to decide yourself. Biases are never pruned.

    **Learning rate.** The phase's factor goes to the engine's
    :attr:`Sparsifier.lr_factor <sparsecore.Sparsifier.lr_factor>`, applied
    only while the optimizer steps (multiplied in the step pre-hook, the
    original values put back in the post-hook), so the user's LR scheduler,
    ``optimizer.state_dict()`` and resuming all see the unscaled rates.
    :meth:`effective_lrs` tells the rate the next step uses. After
    :meth:`Sparsifier.remove` or :meth:`remove` every step uses the param
    groups' own rates.

    **Phase lengths** are fractions of ``total_steps`` (``phases``, switched
    after the optimizer step that completes a phase) or numbers of epochs
    (``phase_epochs``, switched in ``on_epoch_end``; epochs numbered from 0).
    Either lists one length per phase: dense, then sparse and redense per
    iteration.

    After training the model is the plain dense architecture: DSD never
    replaces a layer's forward, and the final phase leaves every mask all-True.

    Args:
        phases: phase lengths as fractions of ``total_steps`` summing to 1
            (default: equal thirds, or equal parts with more iterations).
        phase_epochs: phase lengths in epochs (instead of ``phases``).
        iterations: kept fraction of each sparse phase (an overall density,
            spread by the engine's distribution). Default: one iteration at the
            engine's ``density``.
        redense_lr_scale: learning-rate factor of a redense phase relative to
            the sparse phase (paper: 0.1).
        sparse_lr_scale: learning-rate factor of a sparse phase relative to the
            optimizer's own rate (default 1.0: the user's schedule as is).
        reset_optimizer_state: at each phase change, discard the optimizer
            state of every parameter (momentum, Adam moments, step counts, ...)
            so the next step starts exactly as a newly built optimizer's first
            step would (the reference's "new solver"). With ``False`` only
            pruned and re-grown weights get zero state.

    Raises:
        ConfigurationError: inconsistent or out-of-range options (at
            construction, or at set-up for ones that need the run).
    """

    name = "dsd"
    sets_initial_density = True  # starts dense; each sparse phase prunes to the target density
    #: Density 0.7 (the paper's 30 % sparsity) and a dense first layer when it is a convolution (the paper never
    #: prunes the first conv; an MLP's first layer, most of its weights, is pruned);
    #: options the user passes to the engine win over these.
    engine_defaults = MappingProxyType({"density": 0.7, "dense_first_layer": "conv"})
    patterns = ("unstructured", "block")

    def __init__(self, phases: Sequence[float] | None = None, phase_epochs: Sequence[int] | None = None,
                 iterations: Sequence[float] | None = None, redense_lr_scale: float = 0.1,
                 sparse_lr_scale: float = 1.0, reset_optimizer_state: bool = True) -> None:
        if phases is not None and phase_epochs is not None:
            raise ConfigurationError("dsd: give phases (fractions of total_steps) or phase_epochs, not both")
        if iterations is not None:
            if isinstance(iterations, (str, bytes)) or not isinstance(iterations, Sequence) or not iterations:
                raise ConfigurationError(
                    f"dsd: iterations must be a non-empty list of kept fractions, got {iterations!r}")
            iterations = [distributions.check_density(d, "dsd: every entry of iterations") for d in iterations]
        for what, value in (("redense_lr_scale", redense_lr_scale), ("sparse_lr_scale", sparse_lr_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ConfigurationError(f"dsd: {what} must be a positive number, got {value!r}")
        if not isinstance(reset_optimizer_state, bool):
            raise ConfigurationError(f"dsd: reset_optimizer_state must be True or False, got {reset_optimizer_state!r}")
        self.iterations: list[float] | None = iterations
        self.num_iterations = len(iterations) if iterations is not None else 1
        self.names = phase_names(self.num_iterations)
        for what, lengths in (("phases", phases), ("phase_epochs", phase_epochs)):
            if lengths is not None and (isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence)):
                raise ConfigurationError(f"dsd: {what} must be a list of phase lengths, got {lengths!r}")
        self._phases = None if phases is None else list(phases)
        self._phase_epochs = None if phase_epochs is None else list(phase_epochs)
        self.redense_lr_scale = float(redense_lr_scale)
        self.sparse_lr_scale = float(sparse_lr_scale)
        self.reset_optimizer_state = reset_optimizer_state
        self.phase_schedule: PhaseSchedule | None = None
        #: per sparse phase, the kept fraction of every sparse layer (known after set-up).
        self.sparse_densities: list[dict[str, float]] = []
        self._index = 0
        self._sparsifier: Any = None
        self._scales_lr = True

    # ------------------------------------------------------------------
    # public state
    # ------------------------------------------------------------------
    @property
    def phase_index(self) -> int:
        """Index of the current phase in :attr:`names` (0 = the first dense phase)."""
        return self._index

    @property
    def phase(self) -> str:
        """The phase the next optimizer step trains in: ``"dense"``, ``"sparse"`` or ``"redense"``."""
        return self.names[self._index]

    @property
    def iteration(self) -> int:
        """The current DSD iteration: 0 in the dense phase, ``i`` in the ``i``-th sparse/redense pair (1-based)."""
        return (self._index + 1) // 2

    @property
    def lr_factor(self) -> float:
        """The factor the next optimizer step applies to every param group's learning rate."""
        return self.lr_factor_of(self._index)

    def lr_factor_of(self, index: int) -> float:
        """The learning-rate factor of the phase at ``index``."""
        name = self.names[index]
        if name == DENSE:
            return 1.0
        if name == SPARSE:
            return self.sparse_lr_scale
        return self.sparse_lr_scale * self.redense_lr_scale

    def effective_lrs(self) -> list[float]:
        """The learning rate each param group gets in the next step (scheduler value × :attr:`lr_factor`).

        After :meth:`remove` the factor is no longer applied: the param groups' own rates.
        """
        if self._sparsifier is None:
            raise RuntimeError("dsd: effective_lrs() is available once the sparsifier is set up")
        factor = self._sparsifier.lr_factor if self._sparsifier._handles else 1.0
        return [float(g["lr"]) * factor for g in self._sparsifier.optimizer.param_groups]

    def phase_at(self, step: int | None = None, *, epoch: int | None = None,
                 steps_per_epoch: int | None = None) -> str:
        """The phase in force at an optimizer step or during an epoch.

        Args:
            step: optimizer step, 1-based (the ``step`` of ``on_step``).
            epoch: epoch numbered from 0. With a step schedule, the phase of the
                epoch's last step (the one its end-of-epoch metrics reflect).
            steps_per_epoch: for converting between steps and epochs; defaults to
                the sparsifier's measured ``steps_per_epoch``.

        Returns:
            ``"dense"``, ``"sparse"`` or ``"redense"``.

        Raises:
            RuntimeError: before set-up.
            ValueError: neither or both of ``step`` and ``epoch``, or a
                conversion without a known ``steps_per_epoch``.
        """
        if self.phase_schedule is None:
            raise RuntimeError("dsd: phase_at() is available once the sparsifier is set up")
        spe = steps_per_epoch or getattr(self._sparsifier, "steps_per_epoch", None)
        return self.names[self.phase_schedule.index_at(step=step, epoch=epoch, steps_per_epoch=spe)]

    # ------------------------------------------------------------------
    # set-up hooks
    # ------------------------------------------------------------------
    @hookimpl
    def init_masks(self, layers) -> dict[str, torch.Tensor]:
        """DSD starts dense: every mask all-True."""
        return {name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in layers.items()}

    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Build the phase schedule and the per-iteration densities; set the engine's learning-rate factor."""
        if self._phase_epochs is not None:
            self.phase_schedule = PhaseSchedule.from_epochs(self._phase_epochs, self.names)
        else:
            if sparsifier.total_steps is None:
                raise ConfigurationError("dsd: phase lengths are fractions of total_steps; pass total_steps to the "
                                         "Sparsifier or give phase_epochs=(dense, sparse, redense) in epochs")
            fractions = self._phases or [1.0 / len(self.names)] * len(self.names)
            self.phase_schedule = PhaseSchedule.from_fractions(fractions, sparsifier.total_steps, self.names)
        if self.iterations is None:
            self.sparse_densities = [{name: layer.target_density for name, layer in sparsifier.layers.items()}]
        else:
            if isinstance(sparsifier.distribution, Mapping):
                raise ConfigurationError("dsd: iterations need a distribution that scales with density (a name or "
                                         "a callable); an explicit per-layer mapping has one density per layer")
            shapes = {name: tuple(layer.shape) for name, layer in sparsifier.layers.items()}
            self.sparse_densities = [distributions.resolve(sparsifier.distribution, shapes, d) for d in self.iterations]
        self._sparsifier = sparsifier
        self._scales_lr = True
        sparsifier.lr_factor = self.lr_factor

    # ------------------------------------------------------------------
    # training hooks
    # ------------------------------------------------------------------
    @hookimpl
    def on_step(self, sparsifier, step: int) -> None:
        """Step schedule: change phase after the step that completes one."""
        if self.phase_schedule is not None and self.phase_schedule.unit == STEP:
            self._advance(sparsifier, self.phase_schedule.index_after(step))

    @hookimpl
    def on_epoch_end(self, sparsifier, epoch: int) -> None:
        """Epoch schedule: change phase after the epoch that completes one."""
        if self.phase_schedule is not None and self.phase_schedule.unit != STEP:
            self._advance(sparsifier, self.phase_schedule.index_after(epoch + 1))

    def _advance(self, sparsifier, target: int) -> None:
        while self._index < target:
            self._enter(sparsifier, self._index + 1)

    def _enter(self, sparsifier, index: int) -> None:
        name = self.names[index]
        if name == SPARSE:
            sparsifier.set_masks(self.prune_masks(sparsifier, self.sparse_densities[(index - 1) // 2]))
        else:
            sparsifier.set_masks({n: torch.ones_like(layer.mask) for n, layer in sparsifier.layers.items()})
        if self.reset_optimizer_state:
            sparsifier.reset_optimizer_state()
        self._index = index
        if self._scales_lr:
            sparsifier.lr_factor = self.lr_factor

    @staticmethod
    def prune_masks(sparsifier, densities: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Per layer, the mask keeping the ``layer.active_count(density)`` weights of largest ``|W|``.

        That is ``round(numel * density)`` weights; for a block-sparse layer
        (``layer.block``) the count is rounded to whole blocks and the blocks of
        largest summed ``|W|`` are kept. Ties are broken by position (the lower
        flat or block index is kept), so the kept count is exact.

        Args:
            sparsifier: the engine (its layers' current weights are ranked).
            densities: kept fraction per layer name.
        """
        masks = {}
        for name, layer in sparsifier.layers.items():
            keep = layer.active_count(densities[name])
            everything = torch.ones_like(layer.mask)
            masks[name] = selection.largest(layer.weight.detach().abs(), everything, keep, block=layer.block)
        return masks

    # ------------------------------------------------------------------
    # checkpointing and teardown
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The phase and the schedule it belongs to (numbers, strings and lists only)."""
        return {
            "format": STATE_FORMAT,
            "phase_index": self._index,
            "phase": self.phase,
            "unit": None if self.phase_schedule is None else self.phase_schedule.unit,
            "boundaries": [] if self.phase_schedule is None else list(self.phase_schedule.boundaries),
            "names": list(self.names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume in the saved phase (the engine restores the masks; learning rates need nothing).

        Raises:
            CheckpointError: another format, or a checkpoint of a different phase schedule.
        """
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"dsd: unsupported state format {state.get('format')!r} (expected {STATE_FORMAT})")
        mine = self.state_dict()
        for key in ("unit", "boundaries", "names"):
            saved = list(state[key]) if isinstance(state[key], (list, tuple)) else state[key]
            if saved != mine[key]:
                raise CheckpointError(f"dsd: checkpoint {key} {saved!r} differ from this run's {mine[key]!r}; "
                                      "resume with the same phases, phase_epochs, iterations and total_steps")
        index = int(state["phase_index"])
        if not 0 <= index < len(self.names):
            raise CheckpointError(f"dsd: checkpoint phase index {index} outside 0..{len(self.names) - 1}")
        self._index = index
        if self._sparsifier is not None and self._scales_lr:
            self._sparsifier.lr_factor = self.lr_factor

    def remove(self) -> None:
        """Stop scaling the learning rate: every later step uses the param groups' own rates.

        The sparsifier stays attached (phases and masks go on); calling it
        again does nothing. :meth:`Sparsifier.remove` detaches everything.
        """
        self._scales_lr = False
        if self._sparsifier is not None:
            self._sparsifier.lr_factor = 1.0

    def metrics(self, sparsifier) -> dict[str, Any]:
        """The phase the next step trains in, for the training harness's per-epoch record."""
        return {"phase": self.phase}

    def __repr__(self) -> str:
        return (f"DSDAlgorithm(phase={self.phase!r}, iteration={self.iteration}, lr_factor={self.lr_factor}, "
                f"phase_schedule={self.phase_schedule})")



#: The name under which earlier releases exported the class.
DSD = DSDAlgorithm
