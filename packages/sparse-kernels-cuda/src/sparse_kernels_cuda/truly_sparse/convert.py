"""Converting a masked model to truly sparse layers and back, exactly.

:func:`to_truly_sparse` replaces every masked ``nn.Linear`` with a
:class:`~sparse_kernels_cuda.truly_sparse.SparseLinear` holding its weights at
the mask; :func:`to_masked` does the reverse. Both keep every value bit for
bit, so ``to_masked(to_truly_sparse(model, masks))`` gives back the same
weights and masks. :func:`transfer_optimizer_state` carries per-weight
optimizer state (momentum, Adam moments) across the conversion, so a run can
switch form midway.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sparse_kernels_cuda.truly_sparse.layer import SparseLinear
from sparsecore import Sparsifier

__all__ = ["to_masked", "to_truly_sparse", "transfer_optimizer_state"]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def to_truly_sparse(model: nn.Module, masks: Sparsifier | Mapping[str, Tensor]) -> dict[str, tuple[nn.Linear,
                                                                                                     SparseLinear]]:
    """Replace the masked ``nn.Linear`` layers of ``model`` by ``SparseLinear`` layers, in place.

    Build the optimizer afterwards (over ``model.parameters()``), and detach a
    sparsifier from the masked model (``sparsifier.remove()``).

    Args:
        model: the model holding the layers.
        masks: a :class:`sparsecore.Sparsifier` (its layers' current masks), or
            module name → bool mask shaped like that module's weight (e.g.
            ``sparsifier.state_dict()["masks"]``).

    Returns:
        Module name → ``(old nn.Linear, new SparseLinear)``, for
        :func:`transfer_optimizer_state`.

    Raises:
        ValueError: a name that is not an ``nn.Linear`` of the model, a mask of
            the wrong shape or dtype, or a weight nonzero off its mask. Nothing
            is replaced unless every layer converts.
    """
    if isinstance(masks, Sparsifier):
        masks = {name: layer.mask for name, layer in masks.layers.items()}
    converted: dict[str, tuple[nn.Linear, SparseLinear]] = {}
    for name, mask in masks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no module {name!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"module {name!r} is a {type(module).__name__}; only nn.Linear layers convert to "
                             "SparseLinear (keep the others masked or dense)")
        try:
            converted[name] = (module, SparseLinear.from_dense(module, mask))
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
    for name, (_, sparse) in converted.items():
        _replace(model, name, sparse)
    return converted


def to_masked(model: nn.Module) -> dict[str, Tensor]:
    """Replace every ``SparseLinear`` of ``model`` by a dense ``nn.Linear`` (zeros off the structure), in place.

    Returns:
        Module name → bool mask of the layer, e.g. for
        ``sparsecore.Sparsifier(..., algorithm=...)`` followed by ``set_masks``.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLinear)]
    masks = {}
    for name, sparse in found:
        masks[name] = sparse.mask()
        _replace(model, name, sparse.to_linear())
    return masks


def transfer_optimizer_state(source: torch.optim.Optimizer, target: torch.optim.Optimizer,
                             converted: Mapping[str, tuple[nn.Linear, SparseLinear]]) -> None:
    """Copy a masked run's optimizer state onto the converted layers' parameters.

    Per-weight state tensors (shaped like the dense weight) are gathered at
    the active positions; other state (Adam's step count) and the bias state
    are copied. Parameters ``source`` holds outside ``converted`` are matched
    by identity (layers the conversion left alone).

    Args:
        source: the optimizer of the masked model.
        target: the optimizer built over the converted model.
        converted: what :func:`to_truly_sparse` returned.
    """
    pairs: list[tuple[Tensor, Tensor, Tensor | None]] = []
    for linear, sparse in converted.values():
        pairs.append((linear.weight, sparse.values, sparse.positions()))
        if linear.bias is not None and sparse.bias is not None:
            pairs.append((linear.bias, sparse.bias, None))
    moved = {id(old) for old, _, _ in pairs}
    held = {id(p) for group in target.param_groups for p in group["params"]}
    for group in source.param_groups:
        pairs.extend((p, p, None) for p in group["params"] if id(p) not in moved and id(p) in held)
    for old, new, positions in pairs:
        state = source.state.get(old)
        if not state:
            continue
        target.state[new] = {
            key: (value.reshape(-1).index_select(0, positions).clone()
                  if positions is not None and torch.is_tensor(value) and value.shape == old.shape
                  else value.clone() if torch.is_tensor(value) else value)
            for key, value in state.items()
        }
