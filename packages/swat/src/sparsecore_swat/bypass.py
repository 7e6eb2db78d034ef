"""Layers whose forward their parent module never calls, and a guard for PyTorch's transformer fast path.

A replaced forward only changes what a layer computes if the layer is
called. Two PyTorch modules read their sub-layers' weights directly:

* ``nn.MultiheadAttention`` hands ``out_proj.weight`` and ``out_proj.bias``
  to ``F.multi_head_attention_forward`` (or to its native fast path) and never
  calls ``out_proj``. Its forward cannot be replaced: :func:`bypassed_forwards`
  names every such layer with the reason (the engine also marks these layers
  ``layer.forward_replaceable = False``).
* ``nn.TransformerEncoderLayer`` has a fast path
  (``torch._transformer_encoder_layer_fwd``) that reads ``linear1``,
  ``linear2`` and the attention weights directly. PyTorch takes it only in
  ``eval()`` with autograd off (or no weight requiring grad), never in
  training, and only while no forward hook or pre-hook is attached to the
  layer or its submodules. :class:`FastPathGuard` attaches a no-op forward
  pre-hook to every encoder layer that holds a replaced forward, so that
  layer always runs its Python forward, which calls ``linear1``/``linear2``.
  Under ``nn.TransformerEncoder`` with a ``src_key_padding_mask`` in that mode
  the stack still packs the batch into a nested tensor, which the layers'
  Python forwards accept.

The guard never touches the model before the run is attached: it is put on
at the first call of a replaced forward (the engine installs those only once
every plugin accepted the run, and the engine's one-shot output-size hooks
keep every layer's first forward off the fast path). It takes itself off at
the first encoder-layer call after the replaced forwards are gone
(``Sparsifier.remove()``); that call still runs the Python forward, which
computes the same function.
"""

from __future__ import annotations

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


class FastPathGuard:
    """Keeps ``nn.TransformerEncoderLayer``'s fast path off where it would skip replaced forwards.

    Register every replaced forward with :meth:`watch`, and call :meth:`ensure`
    from those forwards: the first call puts a no-op forward pre-hook on each
    encoder layer of ``model`` that holds a watched module whose forward is
    installed. The hooks take themselves off once none of the watched forwards
    is installed any more.

    Args:
        model: the model the encoder layers belong to.

    Attributes:
        guarded: names of the encoder layers that carry the guard now.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.guarded: list[str] = []
        self._watched: list[tuple[nn.Module, Any]] = []
        self._handles: list[RemovableHandle] = []

    def watch(self, module: nn.Module, forward: Any) -> None:
        """Guard ``module`` while ``forward`` is its installed forward."""
        self._watched.append((module, forward))

    def active(self) -> bool:
        """Whether any watched forward is installed on its module."""
        return any(module.__dict__.get("forward") is forward for module, forward in self._watched)

    def ensure(self) -> None:
        """Put the guard on (once) if a watched forward is installed; cheap when it is on already."""
        if self._handles or not self.active():
            return
        modules = {id(module) for module, _ in self._watched}
        for name, layer in self.model.named_modules():
            if isinstance(layer, nn.TransformerEncoderLayer) and any(id(m) in modules for m in layer.modules()):
                self._handles.append(layer.register_forward_pre_hook(self._check))
                self.guarded.append(name)

    def _check(self, module: nn.Module, args: Any) -> None:
        # Present, the hook keeps the fast path off; once the run is gone, it removes itself.
        if not self.active():
            self.remove()

    def remove(self) -> None:
        """Take the guard off every encoder layer (the fast path is PyTorch's to choose again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.guarded.clear()
