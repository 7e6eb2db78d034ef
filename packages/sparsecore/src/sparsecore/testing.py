"""pytest fixtures for plugin authors, registered through the ``pytest11`` entry point."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn


@pytest.fixture
def tiny_model() -> nn.Module:
    """A seeded three-layer MLP (16 → 32 → 24 → 4)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


@pytest.fixture
def register_algorithm() -> Iterator[Callable[[str, Callable[..., Any]], None]]:
    """Register algorithm factories for one test; they are removed afterwards."""
    from sparsecore.plugins import registry

    names: list[str] = []

    def register(name: str, factory: Callable[..., Any]) -> None:
        registry.register_algorithm(name, factory)
        names.append(name)

    yield register
    for name in names:
        registry.unregister(name)
