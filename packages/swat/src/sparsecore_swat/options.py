"""Validation of SWAT's options: a bad value raises ``sparsecore.ConfigurationError`` naming ``swat`` and the option."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sparsecore import ConfigurationError


def check_fraction(value: Any, option: str) -> float:
    """``value`` as a float in (0, 1].

    Raises:
        sparsecore.ConfigurationError: not a real number (booleans and strings
            included) or outside (0, 1].
    """
    if isinstance(value, (bool, str, bytes)):
        raise ConfigurationError(f"swat: {option} must be a number in (0, 1], got {value!r}")
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"swat: {option} must be a number in (0, 1], got {value!r}") from None
    if math.isnan(fraction) or not 0.0 < fraction <= 1.0:
        raise ConfigurationError(f"swat: {option} must be in (0, 1], got {value!r}")
    return fraction


def check_period(value: Any) -> int:
    """``value`` as an int >= 1 (a float that equals an integer is accepted).

    Raises:
        sparsecore.ConfigurationError: a boolean, a non-integral number or a value below 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value // 1 or value < 1:
        raise ConfigurationError(f"swat: period must be an integer >= 1, got {value!r}")
    return int(value)


def check_choice(value: Any, option: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``.

    Raises:
        sparsecore.ConfigurationError: any other value.
    """
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ConfigurationError(f"swat: {option} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_flag(value: Any, option: str, allow_none: bool = False) -> bool | None:
    """``value`` if it is a bool (or ``None`` where that means "the default").

    Raises:
        sparsecore.ConfigurationError: anything else (``"no"`` would otherwise count as true).
    """
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    allowed = "True, False or None" if allow_none else "True or False"
    raise ConfigurationError(f"swat: {option} must be {allowed}, got {value!r}")
