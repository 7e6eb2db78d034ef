"""Training FLOPs of a dense-to-sparse run, integrated over the steps of the run.

Per optimizer step and per sample a layer with ``k`` active weights and
``P`` output positions costs ``2kP`` (forward) plus ``2kP`` (input gradient)
plus ``2kP`` (weight gradient, masked), i.e. ``6kP``: the rule of the
engine's report for a masked-gradient algorithm and of the ``Pruning`` row
of rigl-reproducibility (``3 f_D (1 - s̄)``). A dense step costs ``6 numel P``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sparsecore import reporting

#: FLOPs per active weight, output position and sample of one training step (forward + backward).
FLOPS_PER_WEIGHT_STEP = 6


@dataclass(frozen=True)
class RunFlops(reporting.RunFlops):
    """Training cost of a whole GMP run against dense training of the same layers.

    The engine's :class:`sparsecore.reporting.RunFlops` (``steps``,
    ``train_flops``, ``dense_train_flops``, ``ratio``: rigl-reproducibility's
    "FLOPs train" column), predicted from the schedule, with the mean density.

    Attributes:
        mean_density: active weights averaged over the steps, over all weights of the sparse layers.
    """

    mean_density: float


def integrate_flops(segments: Sequence[tuple[int, Mapping[str, int]]], numel: Mapping[str, int],
                    positions: Mapping[str, int], total_steps: int) -> RunFlops:
    """Sum the per-step training cost over steps ``1..total_steps``.

    Args:
        segments: ``(step, counts)`` pairs sorted by step, the first at step 0:
            ``counts`` (active weights per layer) are in force for the
            optimizer steps after ``step`` up to the next pair's step.
        numel: weights per layer.
        positions: output positions per sample per layer (1 for Linear, H*W of the output for Conv2d).
        total_steps: optimizer steps of the run.

    Returns:
        The :class:`RunFlops` of the run.

    Raises:
        ValueError: no segment at step 0, unsorted segments, or ``total_steps <= 0``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not segments or segments[0][0] != 0:
        raise ValueError("the first segment must start at step 0 (the masks of set-up)")
    steps = [s for s, _ in segments]
    if steps != sorted(steps):
        raise ValueError(f"segments must be sorted by step, got steps {steps}")
    sparse = dense = active = 0
    for i, (start, counts) in enumerate(segments):
        if start >= total_steps:
            break
        stop = segments[i + 1][0] if i + 1 < len(segments) else total_steps
        length = min(stop, total_steps) - start
        sparse += length * sum(FLOPS_PER_WEIGHT_STEP * counts[name] * positions[name] for name in numel)
        active += length * sum(counts[name] for name in numel)
    dense = total_steps * sum(FLOPS_PER_WEIGHT_STEP * numel[name] * positions[name] for name in numel)
    weights = sum(numel.values())
    return RunFlops(total_steps, sparse, dense, active / (total_steps * weights) if weights else 1.0)
