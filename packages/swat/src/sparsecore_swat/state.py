"""Per-layer top-K state: densities, recompute period and the frozen thresholds."""

from __future__ import annotations

from typing import Any

import torch

from sparsecore_swat import topk
from sparsecore_swat.options import check_choice, check_fraction, check_period

#: The layer kinds a :class:`TopKState` drives.
LAYER_KINDS = ("conv", "linear")


class TopKState:
    """What one SWAT layer keeps and when it recomputes its thresholds.

    The thresholds (one for the weights, one for the input activations) come
    from an exact top-K. A convolution layer with ``period > 1`` reuses them,
    as the reference's ``batch_idx % period`` does: it recomputes on the first
    training forward call of each epoch and on every ``period``-th call after
    it, and keeps the thresholds in between, so between recomputes the
    *threshold* is frozen, not the selection, and the kept count can drift.
    The count restarts at :meth:`start_epoch` (SWAT calls it at every epoch
    end), so with a period that does not divide the steps per epoch the last
    recompute interval of an epoch is shorter. Structured (``"channel"`` /
    ``"filter"``) convolutions reuse only the activation threshold: their
    weight selection is exact on every call, as in the reference. Linear
    layers recompute both on every call whatever the period.

    Args:
        weight_density: fraction of weights (or of kernel slices / filters for
            structured layers) the forward and the input gradient use, in (0, 1].
        activation_density: fraction of input activations kept for the weight
            gradient, in (0, 1]; ``None`` follows ``weight_density`` (also when
            that changes, as in SWAT-M).
        period: recompute the thresholds every ``period`` training calls of an
            epoch (>= 1); honoured by convolution layers (structured ones for
            the activation threshold only).
        structure: ``None``, ``"channel"`` or ``"filter"`` (see :mod:`sparsecore_swat.topk`).
        layer_kind: ``"conv"`` or ``"linear"``: the kind of layer the state
            drives (:func:`~sparsecore_swat.swat_linear` needs ``"linear"``,
            :func:`~sparsecore_swat.swat_conv` needs ``"conv"``).

    Raises:
        sparsecore.ConfigurationError: a density outside (0, 1], a period that
            is not an integer >= 1, an unknown structure or layer kind.

    Attributes:
        weight_threshold: the weight threshold of the last training call (0-dim
            tensor), or ``None`` before the first call.
        activation_threshold: the activation threshold of the last training call, or ``None``.
        calls: training forward calls seen so far.
        epoch_calls: training forward calls since the epoch started (the
            reference's ``batch_idx``); a recompute is due when it is a
            multiple of ``period``.
    """

    def __init__(self, weight_density: float = 1.0, activation_density: float | None = None,
                 period: int = 1, structure: str | None = None, layer_kind: str = "conv") -> None:
        self._weight_density = check_fraction(weight_density, "weight density")
        self._activation_density = (None if activation_density is None
                                    else check_fraction(activation_density, "activation_density"))
        self.period = check_period(period)
        self.structure = topk.check_structure(structure)
        self.layer_kind = check_choice(layer_kind, "layer_kind", LAYER_KINDS)
        self.weight_threshold: torch.Tensor | None = None
        self.activation_threshold: torch.Tensor | None = None
        self.calls = 0
        self.epoch_calls = 0
        self._eval_cache: tuple[Any, torch.Tensor] | None = None

    @property
    def weight_density(self) -> float:
        """Fraction of weights kept; setting it takes effect at the next recompute."""
        return self._weight_density

    @weight_density.setter
    def weight_density(self, value: float) -> None:
        self._weight_density = check_fraction(value, "weight density")
        self._eval_cache = None

    @property
    def activation_density(self) -> float:
        """Fraction of input activations kept (follows the weight density unless set)."""
        return self._weight_density if self._activation_density is None else self._activation_density

    @property
    def dense(self) -> bool:
        """``True`` when both densities are 1: the layer runs the plain dense ops."""
        return self._weight_density >= 1.0 and self.activation_density >= 1.0

    @property
    def reuses_activation_threshold(self) -> bool:
        """Whether the activation threshold is kept between recomputes: convolutions with ``period > 1``."""
        return self.period > 1 and self.layer_kind == "conv"

    @property
    def reuses_weight_threshold(self) -> bool:
        """Whether the weight threshold is kept between recomputes: unstructured convolutions with ``period > 1``."""
        return self.reuses_activation_threshold and self.structure is None

    @property
    def reuses_thresholds(self) -> bool:
        """Whether any threshold is kept between recomputes (see :attr:`reuses_activation_threshold`)."""
        return self.reuses_activation_threshold

    @property
    def weight_recompute_due(self) -> bool:
        """Whether the next training call recomputes the weight threshold."""
        return (not self.reuses_weight_threshold or self.epoch_calls % self.period == 0
                or (self.weight_threshold is None and self._weight_density < 1.0))

    @property
    def activation_recompute_due(self) -> bool:
        """Whether the next training call recomputes the activation threshold."""
        return (not self.reuses_activation_threshold or self.epoch_calls % self.period == 0
                or (self.activation_threshold is None and self.activation_density < 1.0))

    @property
    def recompute_due(self) -> bool:
        """Whether the next training call recomputes both thresholds."""
        return self.weight_recompute_due and self.activation_recompute_due

    def start_epoch(self) -> None:
        """Restart the recompute count: the next training call recomputes (the reference's ``batch_idx`` is 0)."""
        self.epoch_calls = 0

    def training_thresholds(self, weight: torch.Tensor, activation: torch.Tensor
                            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Advance by one training call and return the thresholds it uses.

        Args:
            weight: the layer's dense weight.
            activation: the layer's input.

        Returns:
            ``(weight_threshold, activation_threshold)``; ``None`` for a side kept dense.
        """
        weight_due, activation_due = self.weight_recompute_due, self.activation_recompute_due
        self.calls += 1
        self.epoch_calls += 1
        if self._weight_density >= 1.0:
            self.weight_threshold = None
        elif weight_due:
            self.weight_threshold = topk.weight_threshold(weight, self._weight_density, self.structure)
        if self.activation_density >= 1.0:
            self.activation_threshold = None
        elif activation_due:
            self.activation_threshold = topk.kth_largest(activation.detach().abs(), self.activation_density)
        return self.weight_threshold, self.activation_threshold

    def exact_weight_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The exact top-K selection of ``weight`` at the current density (what inference uses)."""
        if self._weight_density >= 1.0:
            return torch.ones_like(weight, dtype=torch.bool)
        return topk.weight_mask(weight, topk.weight_threshold(weight, self._weight_density, self.structure),
                                self.structure)

    def inference_weight_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """:meth:`exact_weight_mask`, cached until the weight is modified in place."""
        key = (weight.data_ptr(), weight._version, self._weight_density)
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self.exact_weight_mask(weight))
        return self._eval_cache[1]

    def weight_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The selection the next training forward will use for ``weight`` as it is now."""
        if self._weight_density >= 1.0:
            return torch.ones_like(weight, dtype=torch.bool)
        if self.weight_recompute_due or self.weight_threshold is None:
            return self.exact_weight_mask(weight)
        return topk.weight_mask(weight, self.weight_threshold, self.structure)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: densities, call counts and thresholds."""
        return {
            "weight_density": self._weight_density,
            "activation_density": self._activation_density,
            "period": self.period,
            "structure": self.structure,
            "layer_kind": self.layer_kind,
            "calls": self.calls,
            "epoch_calls": self.epoch_calls,
            "weight_threshold": self.weight_threshold,
            "activation_threshold": self.activation_threshold,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the saved state belongs to another layer kind.
        """
        saved_kind = state.get("layer_kind", self.layer_kind)  # absent in checkpoints written before it existed
        if saved_kind != self.layer_kind:
            raise ValueError(f"swat: saved state is for a {saved_kind!r} layer, this one is {self.layer_kind!r}")
        self._weight_density = check_fraction(state["weight_density"], "weight density")
        act = state["activation_density"]
        self._activation_density = None if act is None else check_fraction(act, "activation_density")
        self.period = check_period(state["period"])
        self.structure = topk.check_structure(state["structure"])
        self.calls = int(state["calls"])
        # absent in checkpoints written while the count ran across epochs: it was then the total
        self.epoch_calls = int(state.get("epoch_calls", self.calls))
        self.weight_threshold = state["weight_threshold"]
        self.activation_threshold = state["activation_threshold"]
        self._eval_cache = None

    def __repr__(self) -> str:
        return (f"TopKState(weight_density={self._weight_density:.4f}, "
                f"activation_density={self.activation_density:.4f}, period={self.period}, "
                f"structure={self.structure!r}, layer_kind={self.layer_kind!r}, calls={self.calls}, "
                f"epoch_calls={self.epoch_calls})")
