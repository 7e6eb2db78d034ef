"""Shared helpers for the sparsecore-swat tests."""

from __future__ import annotations

import pytest
import torch


def make_distinct(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A tensor whose magnitudes are all distinct and spaced well apart (no top-K ties)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    magnitudes = (torch.randperm(n, generator=g).to(dtype) + 1.0) / n
    signs = torch.randint(0, 2, (n,), generator=g).to(dtype) * 2 - 1
    return (magnitudes * signs).reshape(shape)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def distinct():
    """The :func:`make_distinct` helper."""
    return make_distinct
