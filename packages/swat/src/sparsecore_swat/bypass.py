"""Layers whose forward their parent module never calls, and a guard for PyTorch's transformer fast path.

A replaced forward only changes what a layer computes if the layer is
called. Two PyTorch modules read their sub-layers' weights directly:

* ``nn.MultiheadAttention`` hands ``out_proj.weight`` and ``out_proj.bias``
  to ``F.multi_head_attention_forward`` (or to its native fast path) and never
  calls ``out_proj``. Its forward cannot be replaced: :func:`bypassed_forwards`
  names every such layer with the reason.
* ``nn.TransformerEncoderLayer`` has a fast path
  (``torch._transformer_encoder_layer_fwd``) that reads ``linear1``,
  ``linear2`` and the attention weights directly. PyTorch takes it only in
  ``eval()`` with autograd off (or no weight requiring grad), never in
  training, and only while no forward hook or pre-hook is attached to the
  layer or its submodules. :class:`FastPathGuard` attaches a no-op pre-hook to
  every encoder layer that holds a replaced forward, so such a layer always
  runs its Python forward, which calls ``linear1``/``linear2``. Under
  ``nn.TransformerEncoder`` with a ``src_key_padding_mask`` in that mode the
  stack still packs the batch into a nested tensor, which the layers' Python
  forwards accept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


def bypassed_forwards(model: nn.Module) -> dict[int, str]:
    """Modules of ``model`` whose own forward is never called, with the reason.

    Args:
        model: the model (its submodules are searched).

    Returns:
        ``id(module)`` to a one-line reason, for the ``out_proj`` of every
        ``nn.MultiheadAttention``.
    """
    reasons: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            reasons[id(module.out_proj)] = (
                f"nn.MultiheadAttention {name or '<model>'!r} passes out_proj.weight to "
                "F.multi_head_attention_forward and never calls out_proj, so its forward cannot be replaced")
    return reasons


def layer_bypass_reason(layer: Any, bypassed: dict[int, str]) -> str | None:
    """Why a sparse layer's forward cannot be replaced, or ``None`` when it can.

    Args:
        layer: the engine's layer object; an engine that knows sets
            ``layer.forward_replaceable`` (absent on older engines: replaceable).
        bypassed: :func:`bypassed_forwards` of the model.
    """
    reason = bypassed.get(id(layer.module))
    if reason is None and not getattr(layer, "forward_replaceable", True):
        reason = "the engine reports that its module's forward is never called"
    return reason


def _keep_python_forward(module: nn.Module, args: Any) -> None:
    """A forward pre-hook that does nothing: its presence turns the encoder fast path off."""


class FastPathGuard:
    """Keeps ``nn.TransformerEncoderLayer``'s fast path off where it would skip replaced forwards.

    Attributes:
        guarded: names of the encoder layers that carry the guard.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self.guarded: list[str] = []

    def install(self, model: nn.Module, replaced: Iterable[nn.Module]) -> list[str]:
        """Guard every encoder layer of ``model`` that contains one of the ``replaced`` modules.

        Args:
            model: the model.
            replaced: modules whose forward was replaced.

        Returns:
            Names of the encoder layers guarded by this call.
        """
        targets = {id(m) for m in replaced}
        names = []
        for name, module in model.named_modules():
            if isinstance(module, nn.TransformerEncoderLayer) and any(id(m) in targets for m in module.modules()):
                self._handles.append(module.register_forward_pre_hook(_keep_python_forward))
                names.append(name)
        self.guarded += names
        return names

    def remove(self) -> None:
        """Take every guard off (the fast path is PyTorch's to choose again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.guarded.clear()
