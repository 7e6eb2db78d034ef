"""The N:M algorithms: ``sr-ste`` (Zhou et al. 2021) and ``asp`` (NVIDIA ASP's dense → prune → fine-tune recipe).

Both run on the engine's N:M pattern (``pattern="2:4"`` by default; any
``"N:M"`` with ``0 < N < M``): every sparse layer keeps exactly N of every M
consecutive weights along its input dimension.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

import sparsecore
from sparsecore import ConfigurationError, MaskingPolicy
from sparsecore.layers import SparseLayer
from sparsecore_nm.functional import magnitude_masks, masked_forward


def _number(owner: str, option: str, value: Any, low: float, high: float | None, high_open: bool) -> float:
    """``value`` as a finite float in ``[low, high]`` (``[low, high)`` if ``high_open``), else a ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{owner}: {option} must be a finite number, got {value!r}")
    above = high is not None and (value >= high if high_open else value > high)
    if value < low or above:
        bound = "" if high is None else f", {high}{')' if high_open else ']'}"
        where = f"[{low}{bound}" if high is not None else f">= {low}"
        raise ConfigurationError(f"{owner}: {option} must be in {where}, got {value!r}")
    return float(value)


class SrSteAlgorithm(sparsecore.Algorithm):
    """SR-STE: N:M masks recomputed from the dense weights every step, sparse-refined straight-through gradients.

    Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks
    From Scratch*, ICLR 2021 (reference code ``aojunzz/NM-sparsity``):

    * the weights stay dense (the engine never zeroes them); each sparse
      layer's forward uses ``W̃ = W ⊙ E``, where ``E`` keeps the N largest
      ``|W|`` of every group of M (ties to the lower index);
    * the backward is straight-through: the gradient of ``W̃`` reaches every
      entry of ``W``, pruned ones included;
    * the sparse-refined term ``λ_W · (1 − E) ⊙ W`` is added to the gradient
      of the pruned weights, once per optimizer step, just before the
      optimizer updates (after ``GradScaler`` unscaled the gradients), so the
      update is ``W ← W − γ (g(W̃) + λ_W (1 − E) ⊙ W)`` as in the paper;
    * after every optimizer step ``E`` is recomputed from the new ``|W|``
      (``layer.mask`` always describes the mask the next forward uses).

    The trained sparse model is ``weight * layer.mask``;
    :func:`sparsecore_nm.prune_weights` writes it into the weights.

    Args:
        lambda_w: ``λ_W``, the decay of pruned weights (the reference code's
            ``decay``); 2e-4 as in the paper; 0 gives plain STE.

    Raises:
        ConfigurationError: ``lambda_w`` not a finite number ``>= 0``, or a
            sparse layer that is not a Linear or Conv1d/2d/3d.
    """

    name = "sr-ste"
    patterns = ("n:m",)
    engine_defaults = MappingProxyType({"pattern": "2:4"})
    masking_policy = MaskingPolicy(mask_weights=False, mask_gradients=False, mask_optimizer_state=False,
                                   reset_grown_state=False)

    def __init__(self, lambda_w: float = 2e-4) -> None:
        self.lambda_w = _number(self.name, "lambda_w", lambda_w, 0.0, None, False)
        self._flips = 0
        self._flip_steps = 0
        self._weights = 0
        self._flip_rate: float | None = None

    @sparsecore.hookimpl
    def init_masks(self, layers: Mapping[str, SparseLayer]) -> dict[str, torch.Tensor]:
        """The N largest ``|w|`` of every group of the initial weights."""
        return magnitude_masks(layers)

    @sparsecore.hookimpl
    def layer_forward(self, layer: SparseLayer):
        """``F.linear`` / the convolution with ``weight ⊙ mask`` and a straight-through gradient."""
        try:
            return masked_forward(layer)
        except TypeError as exc:
            raise ConfigurationError(f"{self.name}: layer {layer.name!r}: {exc}, whose forward sr-ste computes with "
                                     f"the masked weight; keep it dense with exclude=[{layer.name!r}]") from None

    @sparsecore.hookimpl
    def before_optimizer_step(self, sparsifier) -> None:
        """Add ``λ_W · (1 − mask) ⊙ W`` to the gradient of every sparse weight."""
        if self.lambda_w == 0.0:
            return
        with torch.no_grad():
            for layer in sparsifier.layers.values():
                grad = layer.weight.grad
                if grad is not None:
                    grad.add_(layer.weight.masked_fill(layer.mask, 0), alpha=self.lambda_w)

    @sparsecore.hookimpl
    def on_step(self, sparsifier) -> None:
        """Recompute every mask from the updated ``|W|`` (one unrecorded ``set_masks`` per step)."""
        report = sparsifier.set_masks(magnitude_masks(sparsifier.layers), record=False)
        self._flips += sum(u.pruned + u.grown for u in report.layers.values())
        self._flip_steps += 1
        self._weights = sum(layer.capacity for layer in sparsifier.layers.values())

    @sparsecore.hookimpl
    def on_epoch_end(self) -> None:
        """Close the epoch's flip rate."""
        if self._flip_steps:
            self._flip_rate = self._flips / (self._flip_steps * self._weights)
        self._flips = self._flip_steps = 0

    def metrics(self, sparsifier) -> dict[str, Any]:
        """``flip_rate``: mask entries that changed per step over all sparse weights, averaged over the epoch.

        SR-STE's paper tracks it as the stability of the sparse architecture;
        it falls as training converges. A harness reads it after an epoch's
        steps and before ``epoch_end``, so the epoch in progress counts; empty
        before the first step.
        """
        if self._flip_steps:
            return {"flip_rate": self._flips / (self._flip_steps * self._weights)}
        return {} if self._flip_rate is None else {"flip_rate": self._flip_rate}

    def state_dict(self) -> dict[str, Any]:
        """The flip counters of the epoch in progress and the last epoch's flip rate (for exact resume)."""
        return {"flips": self._flips, "flip_steps": self._flip_steps, "weights": self._weights,
                "flip_rate": self._flip_rate}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._flips, self._flip_steps = int(state["flips"]), int(state["flip_steps"])
        self._weights = int(state["weights"])
        self._flip_rate = None if state["flip_rate"] is None else float(state["flip_rate"])


class AspAlgorithm(sparsecore.Algorithm):
    """ASP-style recipe: train dense, prune to N:M once by magnitude, fine-tune with the masks fixed.

    NVIDIA's Automatic SParsity (``apex.contrib.sparsity``) prunes a trained
    dense model once (the N largest ``|W|`` of every group) and fine-tunes it
    with the same optimizer. Here both happen in one run:

    * for the first ``dense_fraction`` of ``total_steps`` every layer is dense
      (its mask all True: the report reads density 1.0);
    * after optimizer step ``round(dense_fraction * total_steps)`` each layer
      keeps the N largest ``|W|`` of every group of M; the other weights and
      their optimizer state become 0;
    * from then on the masks are fixed and the engine masks weights,
      gradients and optimizer state.

    ``dense_fraction=0`` prunes the initial weights at set-up (fine-tuning a
    pretrained model, ASP's ``prune_trained_model``). ASP's offline channel
    permutation is not done.

    Args:
        dense_fraction: fraction of ``total_steps`` trained dense, in [0, 1);
            0.5 by default (ASP fine-tunes as long as the dense run trained).

    Raises:
        ConfigurationError: ``dense_fraction`` out of range; ``total_steps``
            missing while ``dense_fraction > 0``; or a pruning step that is
            not within the run.
    """

    name = "asp"
    patterns = ("n:m",)
    engine_defaults = MappingProxyType({"pattern": "2:4"})
    sets_initial_density = True  # starts dense; the one pruning reaches N/M

    def __init__(self, dense_fraction: float = 0.5) -> None:
        self.dense_fraction = _number(self.name, "dense_fraction", dense_fraction, 0.0, 1.0, True)
        self.prune_step: int | None = 0 if self.dense_fraction == 0 else None
        self.pruned = False

    @sparsecore.hookimpl
    def init_masks(self, layers: Mapping[str, SparseLayer]) -> dict[str, torch.Tensor]:
        """All True (dense phase), or the N largest ``|w|`` per group when ``dense_fraction`` is 0."""
        if self.dense_fraction == 0:
            return magnitude_masks(layers)
        return {name: torch.ones_like(layer.mask) for name, layer in layers.items()}

    @sparsecore.hookimpl
    def on_setup(self, sparsifier) -> None:
        """Fix the pruning step ``round(dense_fraction * total_steps)``; it must fall inside the run."""
        if self.dense_fraction == 0:
            self.pruned = True
            return
        total = sparsifier.total_steps
        if total is None:
            raise ConfigurationError(f"{self.name}: dense_fraction={self.dense_fraction} needs total_steps (the "
                                     "run's optimizer steps) to know when to prune; pass total_steps=, or "
                                     "dense_fraction=0 to prune at once")
        step = round(self.dense_fraction * total)
        if not 0 < step < total:
            raise ConfigurationError(f"{self.name}: dense_fraction={self.dense_fraction} of total_steps={total} "
                                     f"prunes after step {step}, which must be between 1 and {total - 1}")
        self.prune_step = step

    @sparsecore.hookimpl
    def on_step(self, sparsifier, step: int) -> None:
        """After the pruning step: keep the N largest ``|W|`` of every group, once."""
        if not self.pruned and self.prune_step is not None and step >= self.prune_step:
            sparsifier.set_masks(magnitude_masks(sparsifier.layers))
            self.pruned = True

    def metrics(self, sparsifier) -> dict[str, Any]:
        """``phase``: ``"dense"`` before pruning, ``"sparse"`` after."""
        return {"phase": "sparse" if self.pruned else "dense"}

    def state_dict(self) -> dict[str, Any]:
        """Whether the model was pruned and the pruning step."""
        return {"pruned": self.pruned, "prune_step": self.prune_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.pruned = bool(state["pruned"])
        self.prune_step = None if state["prune_step"] is None else int(state["prune_step"])
