"""Per-layer densities: ``uniform``, ``erk`` and ``er`` (Evci et al. 2020), or an explicit mapping.

All functions take the sparse layers' weight shapes (in model order) and the
overall density and return one density per layer. The overall budget
``density * sum(numel)`` is met up to rounding; no layer exceeds density 1:
a layer that would is made dense and the budget is re-solved over the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from sparsecore.errors import ConfigurationError

Shapes = Mapping[str, Sequence[int]]


def check_density(density: float, what: str = "density") -> float:
    """Return ``density`` as a float, or raise if it is not a number in (0, 1]."""
    if isinstance(density, (bool, str, bytes)):
        raise ConfigurationError(f"{what} must be a number in (0, 1], got {density!r}")
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ConfigurationError(f"{what} must be in (0, 1], got {density!r}")
    return value


def uniform(shapes: Shapes, density: float) -> dict[str, float]:
    """Every layer gets the same density."""
    density = check_density(density)
    return dict.fromkeys(shapes, density)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def erk_scores(shapes: Shapes, power: float = 1.0) -> dict[str, float]:
    """Raw Erdős–Rényi-Kernel scores ``(sum(shape) / prod(shape)) ** power``."""
    return {name: (sum(shape) / _numel(shape)) ** power for name, shape in shapes.items()}


def er_scores(shapes: Shapes, power: float = 1.0) -> dict[str, float]:
    """Raw Erdős–Rényi scores ``((n_out + n_in) / (n_out * n_in)) ** power`` from the first two dims."""
    out: dict[str, float] = {}
    for name, shape in shapes.items():
        n_out, n_in = int(shape[0]), int(shape[1]) if len(shape) > 1 else 1
        out[name] = ((n_out + n_in) / (n_out * n_in)) ** power
    return out


def scaled(shapes: Shapes, density: float, scores: Mapping[str, float]) -> dict[str, float]:
    """Densities proportional to ``scores`` meeting the overall ``density`` budget.

    Layers whose density would exceed 1 become dense and the budget is re-solved
    over the remaining layers (highest score first), as in RigL's ERK solver.
    """
    density = check_density(density)
    sizes = {name: _numel(shape) for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        remaining = budget - sum(sizes[n] for n in dense)
        divisor = sum(scores[n] * sizes[n] for n in free)
        eps = remaining / divisor if divisor > 0 else 0.0
        top = max((scores[n] for n in free), default=0.0)
        if free and eps * top > 1.0:
            dense.update(n for n in free if scores[n] == top)
            continue
        break
    return {n: 1.0 if n in dense else eps * scores[n] for n in shapes}


def erk(shapes: Shapes, density: float, power: float = 1.0) -> dict[str, float]:
    """ERK densities: proportional to ``(sum(shape)/prod(shape))**power``, capacity-checked."""
    return scaled(shapes, density, erk_scores(shapes, power))


def er(shapes: Shapes, density: float, power: float = 1.0) -> dict[str, float]:
    """ER densities: proportional to ``(n_in + n_out)/(n_in * n_out)``, capacity-checked."""
    return scaled(shapes, density, er_scores(shapes, power))


DISTRIBUTIONS: dict[str, Callable[..., dict[str, float]]] = {"uniform": uniform, "erk": erk, "er": er}


def resolve(distribution: str | Mapping[str, float] | Callable[..., Mapping[str, float]], shapes: Shapes,
            density: float) -> dict[str, float]:
    """Per-layer densities from a distribution name, an explicit mapping, or a callable.

    Args:
        distribution: ``"uniform"``, ``"erk"``, ``"er"``; a mapping of layer name
            to density (every sparse layer must be named); or a callable
            ``f(shapes, density) -> mapping``.
        shapes: weight shape per sparse layer.
        density: overall density (used by named distributions and callables).

    Raises:
        ConfigurationError: unknown name, a layer missing or unknown in the
            mapping, or a density outside (0, 1].
    """
    if isinstance(distribution, str):
        key = distribution.lower()
        if key not in DISTRIBUTIONS:
            raise ConfigurationError(
                f"unknown distribution {distribution!r}; choose one of {sorted(DISTRIBUTIONS)} or pass a mapping")
        result = DISTRIBUTIONS[key](shapes, density)
    elif callable(distribution):
        result = dict(distribution(shapes, density))
    elif isinstance(distribution, Mapping):
        result = dict(distribution)
    else:
        raise ConfigurationError(
            f"distribution must be a name, a mapping or a callable, got {type(distribution).__name__}")
    missing = [n for n in shapes if n not in result]
    unknown = [n for n in result if n not in shapes]
    if missing or unknown:
        raise ConfigurationError(
            f"distribution does not match the sparse layers: missing {missing}, unknown {unknown}; "
            f"sparse layers are {list(shapes)}")
    return {n: check_density(result[n], f"density of layer {n!r}") for n in shapes}
