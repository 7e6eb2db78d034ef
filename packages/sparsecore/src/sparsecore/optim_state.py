"""Reading and masking the optimizer state of one weight tensor."""

from __future__ import annotations

import torch

ADAM_EPS = 1e-8


def weight_state(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The optimizer's per-element state tensors for ``weight`` (those shaped like it)."""
    state = optimizer.state.get(weight, {})
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == weight.shape}


def zero_state(optimizer: torch.optim.Optimizer, weight: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every per-element state tensor of ``weight`` where ``where`` is True."""
    for tensor in weight_state(optimizer, weight).values():
        tensor.masked_fill_(where, 0)


def momentum(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> torch.Tensor | None:
    """The momentum of ``weight`` as sparse momentum defines it.

    SGD: ``momentum_buffer``. Adam-family: the normalised momentum
    ``exp_avg / (sqrt(exp_avg_sq) + 1e-8)``. ``None`` before the first step or
    for optimizers with neither.
    """
    state = optimizer.state.get(weight, {})
    if "exp_avg" in state and "exp_avg_sq" in state:
        return state["exp_avg"] / (state["exp_avg_sq"].sqrt() + ADAM_EPS)
    buf = state.get("momentum_buffer")
    return buf if torch.is_tensor(buf) else None
