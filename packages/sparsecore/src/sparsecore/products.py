"""Sparse products a kernel plugin offers to an algorithm that owns a layer's forward.

``layer_forward`` is first-result: one plugin owns a layer's forward. An
algorithm with its own autograd path (SWAT: top-K weights in forward and input
gradient, top-K activations in the weight gradient) and a kernel plugin
therefore compose through products instead: the algorithm asks for them with
:func:`layer_products` while building its forward, and calls them inside its
own forward and backward. The kernel plugin answers the ``layer_products``
hook with an object implementing :class:`SparseProducts`; without one (no
kernel plugin, an unsupported layer) the algorithm runs its dense ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from sparsecore.layers import SparseLayer
    from sparsecore.sparsifier import Sparsifier

__all__ = ["SparseProducts", "layer_products"]


@runtime_checkable
class SparseProducts(Protocol):
    """The products of one ``Linear`` layer's training step with a sparse weight or sparse activations.

    Every operand is 2-D (``(tokens, features)``); none records autograd
    history: call them inside a custom ``torch.autograd.Function``. Each result
    equals the dense product up to reduction order.
    """

    def weight_operand(self, weight: torch.Tensor, mask: Callable[[], torch.Tensor], x: torch.Tensor,
                       density: float) -> Any | None:
        """``weight ⊙ mask()`` in the kernel's format, for :meth:`mm_weight_t` and :meth:`mm_weight`.

        Built once per forward (the mask may change every step) and used by
        both products. ``mask`` returns the bool selection and is called only
        when the kernel takes the product; ``density`` is the fraction it keeps
        and ``x`` the 2-D input the forward multiplies. ``None`` where the
        kernel does not pay or does not support the weight (dtype, device,
        density): use dense ops then.
        """

    def mm_weight_t(self, x: torch.Tensor, operand: Any) -> torch.Tensor:
        """``x @ (weight ⊙ mask)ᵀ``: ``(tokens, in)`` to ``(tokens, out)`` (the forward)."""

    def mm_weight(self, grad: torch.Tensor, operand: Any) -> torch.Tensor:
        """``grad @ (weight ⊙ mask)``: ``(tokens, out)`` to ``(tokens, in)`` (the input gradient)."""

    def grad_weight(self, grad: torch.Tensor, x: torch.Tensor, density: float) -> torch.Tensor | None:
        """``gradᵀ @ x``, dense ``(out, in)``, for an ``x`` that is mostly zeros (top-K activations).

        ``density`` is the largest fraction of ``x`` that is non-zero. ``None``
        where the kernel does not pay for this ``x``: use the dense product then.
        """


def layer_products(sparsifier: Sparsifier, layer: SparseLayer) -> SparseProducts | None:
    """The products a plugin offers for ``layer`` (the ``layer_products`` hook), or ``None``.

    Call it from ``layer_forward``, while the sparsifier is built.

    Raises:
        HookResultError: the answer does not implement :class:`SparseProducts`.
    """
    from sparsecore.errors import HookResultError

    products, who = sparsifier.manager.call_first_or_none("layer_products", sparsifier=sparsifier, layer=layer)
    if products is not None and not isinstance(products, SparseProducts):
        raise HookResultError("layer_products", who, f"returned {type(products).__name__}, which does not "
                                                     "implement sparsecore.products.SparseProducts")
    return products
