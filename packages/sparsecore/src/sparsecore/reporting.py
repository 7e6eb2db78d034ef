"""Density, nonzero counts and analytic training FLOPs of a sparse model against dense."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sparsecore.layers import SparseLayer
from sparsecore.policy import MaskingPolicy


@dataclass(frozen=True)
class LayerStats:
    """Per-layer numbers of a :class:`DensityReport`.

    FLOPs are per sample (multiply-add = 2 FLOPs) and ``None`` until the layer
    has run one forward pass (conv output size is only known then).

    Attributes:
        name: layer name.
        kind: ``"linear"``, ``"conv2d"``, ...
        shape: weight shape.
        numel: number of weights.
        nnz: active weights.
        density: ``nnz / numel``.
        target_density: density the distribution assigned.
        forward_flops: sparse forward FLOPs per sample.
        backward_flops: sparse backward FLOPs per sample (input and weight gradient).
        dense_forward_flops: dense forward FLOPs per sample.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    density: float
    target_density: float
    forward_flops: int | None
    backward_flops: int | None
    dense_forward_flops: int | None


@dataclass(frozen=True)
class DensityReport:
    """Density and training cost of every sparse layer and of the whole model.

    Attributes:
        layers: one :class:`LayerStats` per sparse layer, in model order.
        dense_params: parameters the engine does not sparsify (biases, norms, dense layers).
        dense_layers: module name → why it stays dense, for the modules a user
            might expect sparse (embeddings, recurrent weights, attention
            weights under a forward-sparsity algorithm).
    """

    layers: tuple[LayerStats, ...]
    dense_params: int
    dense_layers: Mapping[str, str] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        """Active weights over all sparse layers."""
        return sum(s.nnz for s in self.layers)

    @property
    def numel(self) -> int:
        """Weights over all sparse layers."""
        return sum(s.numel for s in self.layers)

    @property
    def density(self) -> float:
        """Overall density of the sparse layers."""
        return self.nnz / self.numel if self.numel else 1.0

    @property
    def train_flops(self) -> int | None:
        """Sparse training FLOPs per sample (forward + backward), or ``None`` before a forward."""
        return _sum_known([None if s.forward_flops is None or s.backward_flops is None
                           else s.forward_flops + s.backward_flops for s in self.layers])

    @property
    def dense_train_flops(self) -> int | None:
        """Dense training FLOPs per sample of the same layers (3x forward)."""
        dense_forward = _sum_known([s.dense_forward_flops for s in self.layers])
        return None if dense_forward is None else 3 * dense_forward

    @property
    def train_flops_ratio(self) -> float | None:
        """Sparse over dense training FLOPs of the sparse layers."""
        sparse, dense = self.train_flops, self.dense_train_flops
        return None if sparse is None or not dense else sparse / dense

    @property
    def forward_flops(self) -> int | None:
        """Sparse forward (inference) FLOPs per sample, or ``None`` before a forward."""
        return _sum_known([s.forward_flops for s in self.layers])

    @property
    def forward_flops_ratio(self) -> float | None:
        """Sparse over dense forward (inference) FLOPs of the sparse layers: the "FLOPs (test)" of RigL's tables."""
        sparse, dense = self.forward_flops, _sum_known([s.dense_forward_flops for s in self.layers])
        return None if sparse is None or not dense else sparse / dense

    def as_dict(self) -> dict:
        """Plain-data form (JSON-serialisable)."""
        return {"layers": [asdict(s) for s in self.layers], "dense_params": self.dense_params, "nnz": self.nnz,
                "numel": self.numel, "density": self.density, "train_flops": self.train_flops,
                "dense_train_flops": self.dense_train_flops, "train_flops_ratio": self.train_flops_ratio,
                "forward_flops": self.forward_flops, "forward_flops_ratio": self.forward_flops_ratio,
                "dense_layers": dict(self.dense_layers)}

    def table(self) -> str:
        """A Markdown table of the layers and the total."""
        rows = ["| layer | shape | density | nnz / numel | train FLOPs vs dense |", "|---|---|---|---|---|"]
        for s in self.layers:
            if s.forward_flops is None or s.backward_flops is None or s.dense_forward_flops is None:
                ratio = "n/a"
            else:
                ratio = f"{(s.forward_flops + s.backward_flops) / (3 * s.dense_forward_flops):.3f}"
            shape = "x".join(map(str, s.shape))
            rows.append(f"| {s.name} | {shape} | {s.density:.4f} | {s.nnz:,} / {s.numel:,} | {ratio} |")
        total = "n/a" if self.train_flops_ratio is None else f"{self.train_flops_ratio:.3f}"
        rows.append(f"| **total** | | {self.density:.4f} | {self.nnz:,} / {self.numel:,} | {total} |")
        if self.dense_layers:
            rows.append("")
            rows.extend(f"- `{name}` stays dense: {reason}" for name, reason in self.dense_layers.items())
        return "\n".join(rows)


def _sum_known(values: list[int | None]) -> int | None:
    """The sum, or ``None`` if any value is ``None``."""
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


@dataclass(frozen=True)
class RunFlops:
    """Training FLOPs of the optimizer steps a run has taken, against the same steps trained dense.

    Each step counts the per-sample training FLOPs of the sparse layers that
    :meth:`Sparsifier.report` gives for the masks in force during that step
    (``layer_train_flops`` answers included), so a run whose density changes
    (gradual pruning, DSD's phases) is charged what each step cost. Per
    sample: multiply by the batch size for the run's total.

    Attributes:
        steps: optimizer steps counted.
        train_flops: sparse training FLOPs per sample, summed over the steps.
        dense_train_flops: the same steps trained dense (3x the dense forward).
    """

    steps: int
    train_flops: int
    dense_train_flops: int

    @property
    def ratio(self) -> float | None:
        """``train_flops / dense_train_flops`` (``None`` before the first step)."""
        return self.train_flops / self.dense_train_flops if self.dense_train_flops else None

    def as_dict(self) -> dict:
        """Plain-data form (JSON-serialisable), with ``ratio``."""
        return {**asdict(self), "ratio": self.ratio}


#: Per-step ``(sparse, dense)`` training FLOPs per sample, or ``None`` while unknown (before a forward pass).
PerStepFlops = Callable[[], "tuple[int, int] | None"]


class FlopsLedger:
    """The running sum behind :class:`RunFlops`, kept segment by segment.

    A step's cost changes only when the masks do, so the engine closes the
    open segment (the steps since the last change, at the cost in force)
    just before each recorded mask change, and adds the open segment when
    asked for the total. The cost is computed only for segments with steps.
    A segment whose cost is unknown (a sparse layer that never ran forward),
    or a run resumed from a state without the ledger, makes the total unknown.
    """

    def __init__(self) -> None:
        self.train_flops = 0
        self.dense_train_flops = 0
        self.since_step = 0
        self.known = True

    def close(self, step: int, per_step: PerStepFlops) -> None:
        """Charge the steps from ``since_step`` to ``step`` at ``per_step()``'s cost and start a new segment."""
        self.train_flops, self.dense_train_flops, self.known = self._add(step, per_step)
        self.since_step = step

    def total(self, step: int, per_step: PerStepFlops) -> RunFlops | None:
        """The closed segments plus the open one up to ``step``; ``None`` when some cost is unknown."""
        train, dense, known = self._add(step, per_step)
        return RunFlops(step, train, dense) if known else None

    def _add(self, step: int, per_step: PerStepFlops) -> tuple[int, int, bool]:
        length = step - self.since_step
        if length <= 0 or not self.known:
            return self.train_flops, self.dense_train_flops, self.known
        cost = per_step()
        if cost is None:
            return self.train_flops, self.dense_train_flops, False
        return self.train_flops + length * cost[0], self.dense_train_flops + length * cost[1], True

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers: the sums, the open segment's first step, whether the sums are known."""
        return {"train_flops": self.train_flops, "dense_train_flops": self.dense_train_flops,
                "since_step": self.since_step, "known": self.known}

    def load_state_dict(self, state: Mapping[str, Any] | None, step: int) -> None:
        """Restore :meth:`state_dict`; ``None`` (a state saved without one) leaves the sums unknown from ``step``."""
        if state is None:
            self.train_flops = self.dense_train_flops = 0
            self.since_step, self.known = step, False
            return
        self.train_flops, self.dense_train_flops = int(state["train_flops"]), int(state["dense_train_flops"])
        self.since_step, self.known = int(state["since_step"]), bool(state["known"])


def default_train_flops(layer: SparseLayer, policy: MaskingPolicy) -> tuple[int, int]:
    """Forward and backward FLOPs per sample from the mask (a dense weight gradient under a dense-gradient policy)."""
    nnz, positions = layer.nnz, layer.output_positions or 0
    grad_w = nnz if policy.mask_gradients else layer.capacity
    return 2 * nnz * positions, 2 * nnz * positions + 2 * grad_w * positions


def layer_stats(layer: SparseLayer, flops: tuple[int, int] | None) -> LayerStats:
    """Numbers of one layer, with its ``(forward, backward)`` FLOPs per sample (``None`` before a forward)."""
    nnz, numel = layer.nnz, layer.capacity
    if flops is None or layer.output_positions is None:
        fwd = bwd = dense = None
    else:
        fwd, bwd = int(flops[0]), int(flops[1])
        dense = 2 * numel * layer.output_positions
    return LayerStats(layer.name, layer.kind, tuple(layer.shape), numel, nnz, nnz / numel, layer.target_density,
                      fwd, bwd, dense)


@dataclass(frozen=True)
class LayerUpdate:
    """What one topology update did to one layer.

    Attributes:
        pruned: weights deactivated.
        grown: weights activated that were inactive before the update.
        nnz: active weights after the update.
        density: density after the update.
    """

    pruned: int
    grown: int
    nnz: int
    density: float


@dataclass(frozen=True)
class TopologyReport:
    """The outcome of one topology update (or :meth:`Sparsifier.set_masks`).

    Attributes:
        step: optimizer steps completed when the update ran.
        epoch: last epoch reported, or ``None``.
        rate: prune rate passed to the update (``None`` for ``set_masks``).
        layers: per-layer :class:`LayerUpdate`, in model order.
        reason: ``"update"`` or ``"set_masks"``.
    """

    step: int
    epoch: int | None
    rate: float | None
    layers: Mapping[str, LayerUpdate] = field(default_factory=dict)
    reason: str = "update"

    @property
    def nnz(self) -> int:
        """Active weights over all layers after the update."""
        return sum(u.nnz for u in self.layers.values())

    def as_dict(self) -> dict:
        """Plain-data form (JSON-serialisable)."""
        return {"step": self.step, "epoch": self.epoch, "rate": self.rate, "reason": self.reason,
                "layers": {k: asdict(v) for k, v in self.layers.items()}, "nnz": self.nnz}
