"""Fixtures of the snip-baseline tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

# Test helpers shared by the modules here (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))

from snip_helpers import make_batch, make_mlp


@pytest.fixture
def mlp() -> nn.Sequential:
    """The seeded float64 MLP of :func:`snip_helpers.make_mlp`."""
    return make_mlp()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight seeded samples for the MLP."""
    return make_batch()
