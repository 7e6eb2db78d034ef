"""Reading and masking the optimizer state of one weight tensor."""

from __future__ import annotations

from collections.abc import Iterable

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


def clear_state(optimizer: torch.optim.Optimizer) -> None:
    """Discard the per-parameter state of every parameter, as if the optimizer were newly built.

    Optimizers create their state lazily at a parameter's first step (momentum
    buffers, Adam moments, step counts, Rprop step sizes, ASGD's eta and mu),
    so the next step is exactly the first step of a fresh optimizer with the
    same hyper-parameters. ``torch.optim.Adagrad`` gets the state its
    constructor creates (``sum = initial_accumulator_value``, ``step = 0``):
    some torch versions set it up only there.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            old = optimizer.state.pop(p, None)
            if old and isinstance(optimizer, torch.optim.Adagrad) and "sum" in old:
                v = optimizer.defaults["initial_accumulator_value"]
                fresh = {"sum": torch.full_like(p, complex(v, v) if p.is_complex() else v,
                                                memory_format=torch.preserve_format)}
                if torch.is_tensor(old.get("step")):
                    fresh["step"] = torch.zeros_like(old["step"])  # keeps the fused/non-fused dtype and device
                optimizer.state[p] = fresh


def require_momentum(optimizer: torch.optim.Optimizer, who: str, why: str,
                     params: Iterable[torch.Tensor] | None = None,
                     hint: str = "use SGD with momentum > 0 or an Adam-family optimizer") -> None:
    """Refuse an optimizer without momentum (SGD with ``momentum=0``) for an algorithm that reads it.

    Adam-family optimizers (``betas``) always have a first moment.

    Args:
        optimizer: the run's optimizer.
        who: the algorithm, as the message names it.
        why: what needs the momentum.
        params: only the param groups holding one of these are checked (default: every group).
        hint: what to do instead.

    Raises:
        ConfigurationError: naming ``who`` and ``why``.
    """
    from sparsecore.errors import ConfigurationError

    wanted = None if params is None else {id(p) for p in params}
    for group in optimizer.param_groups:
        if wanted is not None and not any(id(p) in wanted for p in group["params"]):
            continue
        if "momentum" in group and "betas" not in group and not group["momentum"]:
            raise ConfigurationError(f"{who}: the optimizer has momentum 0 ({type(optimizer).__name__} "
                                     f"momentum={group['momentum']!r}), but {why}; {hint}")
