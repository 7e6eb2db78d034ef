"""Per-layer backend choice: time one call of every candidate, keep the fastest, cache it.

The key of a decision is ``(shape, tokens, density, dtype, device, pattern,
grad, input_grad)``: dynamic sparse training keeps each layer's density fixed,
so a layer is timed once and every later topology update reuses the answer.
Masked dense is the fallback and the baseline; another backend is chosen only
when it is faster than masked dense by more than ``margin`` (timing noise), so
activating the plugin never makes a layer measurably slower.

Timings are wall clock, so two runs with the same seed may choose differently
on a loaded machine. Two rules make the choice reproducible:

* under ``torch.use_deterministic_algorithms(True)`` nothing is timed: every
  layer runs masked dense unless a backend is forced;
* under autocast for the key's device nothing is timed either and every layer
  runs masked dense, forced or not (the CSR products have no bf16/fp16 path
  and would not follow autocast's casting rules).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparse_kernels_cuda.backends.base import Backend
from sparse_kernels_cuda.ops import autocast_active

__all__ = ["DEFAULT_MAX_DENSITY", "DispatchKey", "Dispatcher", "time_backend"]

#: Densest mask for which CSR is tried: MKL CSR breaks even near 0.2 on CPU (kernels reference).
DEFAULT_MAX_DENSITY = 0.2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchKey:
    """What a backend decision depends on.

    Attributes:
        shape: ``(out, in)`` of the weight.
        tokens: rows of the flattened input (batch × positions).
        density: the mask's density, rounded to 3 decimals.
        dtype: compute dtype.
        device: device type (``"cpu"``, ``"cuda"``).
        pattern: mask pattern (``"unstructured"``, ``"2:4"``, ``"block<B>"``).
        grad: whether the call builds a graph (training) or not (inference).
        input_grad: whether the backward also computes the input gradient
            (``False`` for a first layer, whose input needs no gradient).
    """

    shape: tuple[int, int]
    tokens: int
    density: float
    dtype: torch.dtype
    device: str
    pattern: str
    grad: bool
    input_grad: bool = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(
    backend: Backend,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    plan: Any,
    grad: bool,
    input_grad: bool | None = None,
) -> float:
    """Seconds of one forward (+ backward when ``grad``) of ``backend`` on detached copies.

    Args:
        backend: the backend to time.
        x: an input like the layer's.
        weight: the layer's weight.
        bias: the layer's bias or ``None``.
        plan: the backend's plan for the current mask.
        grad: also run the backward (always the weight gradient).
        input_grad: also compute the input gradient in the backward;
            ``None`` = exactly when ``x.requires_grad``, as the real call would.

    Returns:
        Wall-clock seconds (device synchronised).
    """
    if input_grad is None:
        input_grad = x.requires_grad
    xd = x.detach().requires_grad_(grad and input_grad and x.is_floating_point())
    wd = weight.detach().requires_grad_(grad)
    bd = None if bias is None else bias.detach()
    _sync(x.device)
    start = time.perf_counter()
    with torch.enable_grad() if grad else torch.no_grad():
        y = backend.linear(xd, wd, bd, plan)
        if grad:
            y.backward(torch.ones_like(y))
    _sync(x.device)
    return time.perf_counter() - start


class Dispatcher:
    """Chooses and caches a backend per :class:`DispatchKey`.

    Args:
        backends: candidate backends, in order of preference on ties.
        fallback: the masked-dense backend (always valid).
        force: name of a backend to use wherever it supports the layer
            (``None`` or ``"auto"`` = measure).
        max_density: masks denser than this never try the CSR backend
            (default 0.2, the CPU break-even of the kernels reference; saves
            the timing). A forced backend ignores it.
        margin: a candidate must beat the fallback by this fraction.
        repeats: timed calls per candidate after one warm-up (the minimum counts).
    """

    def __init__(
        self,
        backends: list[Backend],
        fallback: Backend,
        force: str | None = None,
        max_density: float = DEFAULT_MAX_DENSITY,
        margin: float = 0.05,
        repeats: int = 3,
    ) -> None:
        names = [b.name for b in backends] + [fallback.name]
        if force not in (None, "auto") and force not in names:
            raise ValueError(f"unknown backend {force!r}; available: {', '.join(names)}")
        self.backends = backends
        self.fallback = fallback
        self.force = None if force == "auto" else force
        self.max_density = max_density
        self.margin = margin
        self.repeats = repeats
        self.decisions: dict[DispatchKey, str] = {}
        self.timings: dict[DispatchKey, dict[str, float]] = {}

    def by_name(self, name: str) -> Backend:
        """The backend called ``name``."""
        for b in [*self.backends, self.fallback]:
            if b.name == name:
                return b
        raise KeyError(name)

    def candidates(self, key: DispatchKey) -> list[Backend]:
        """Available backends that support ``key`` (fallback excluded)."""
        out = []
        for b in self.backends:
            if not b.is_available() or not b.supports(key.shape, key.dtype, key.pattern, key.device):
                continue
            if b.name == "csr" and key.density > self.max_density:
                continue
            if b.name == "triton-block" and key.device == "cpu":
                continue  # the Triton interpreter is a test tool, never a fast path

            out.append(b)
        return out

    def choose(self, key: DispatchKey, run: Callable[[Backend], float]) -> Backend:
        """The backend for ``key``, timing candidates with ``run`` the first time.

        Under autocast for ``key.device`` the fallback is returned, forced
        backend or not; under deterministic algorithms
        (``torch.are_deterministic_algorithms_enabled()``) the fallback is
        returned unless a backend is forced. Neither times nor caches anything,
        so a decision measured earlier applies again once the mode is left.

        Args:
            key: the decision key.
            run: ``run(backend) -> seconds`` times one call on the real inputs.

        Returns:
            The chosen backend (the fallback when nothing measures faster).
        """
        if autocast_active(key.device):
            return self.fallback
        if self.force is None and torch.are_deterministic_algorithms_enabled():
            return self.fallback
        name = self.decisions.get(key)
        if name is not None:
            return self.by_name(name)
        cands = self.candidates(key)
        if self.force is not None:
            forced = self.by_name(self.force)
            if forced is self.fallback or (
                forced.is_available() and forced.supports(key.shape, key.dtype, key.pattern, key.device)
            ):
                chosen = forced
            else:
                log.warning("backend %r does not support %s; using %s", self.force, key, self.fallback.name)
                chosen = self.fallback
        elif not cands:
            chosen = self.fallback
        else:
            chosen = self._measure(key, cands, run)
        self.decisions[key] = chosen.name
        return chosen

    def _measure(self, key: DispatchKey, cands: list[Backend], run: Callable[[Backend], float]) -> Backend:
        contenders = [self.fallback, *cands]
        best: dict[str, float] = {b.name: float("inf") for b in contenders}
        for b in contenders:  # warm-up: JIT, autotuning, first-touch allocations
            run(b)
        for _ in range(self.repeats):  # interleaved, so load changes hit every backend alike
            for b in contenders:
                best[b.name] = min(best[b.name], run(b))
        self.timings[key] = best
        base = best[self.fallback.name]
        winner = min(cands, key=lambda b: best[b.name])
        chosen = winner if best[winner.name] < base * (1.0 - self.margin) else self.fallback
        log.info("dispatch %s: %s -> %s", key, {k: round(v * 1e3, 3) for k, v in best.items()}, chosen.name)
        return chosen
