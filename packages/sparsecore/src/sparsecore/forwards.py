"""Replaced layer forwards: installing them, restoring the originals, and keeping them called.

A replaced forward only changes what a layer computes if the layer is
called. ``nn.TransformerEncoderLayer`` has a fast path
(``torch._transformer_encoder_layer_fwd``) that reads ``linear1``,
``linear2`` and the attention weights directly, skipping their forwards.
PyTorch takes it only in ``eval()`` with autograd off (or no weight requiring
grad), and only while no forward hook or pre-hook is attached to the encoder
layer or any of its sub-modules. :class:`ReplacedForwards` therefore attaches
a no-op forward pre-hook (the guard) to every encoder layer that holds a
replaced forward, for as long as the forwards are installed: such a layer
always runs its Python forward, which calls ``linear1``/``linear2``. Under
``nn.TransformerEncoder`` with a ``src_key_padding_mask`` in that mode the
stack still packs the batch into a nested tensor, which the layers' Python
forwards accept.

Which weights the model reads without calling any forward (an
``nn.MultiheadAttention``'s ``out_proj`` and input projections) is decided by
:mod:`sparsecore.layer_selection` (``SparseLayer.forward_bypass_reason``);
the engine never replaces their forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


def _keep_python_forward(module: nn.Module, args: Any) -> None:
    """The guard: present, it keeps ``nn.TransformerEncoderLayer`` off its fast path; it changes nothing."""


class ReplacedForwards:
    """The forwards a run replaced, and the fast-path guard that keeps them called.

    The engine installs every replaced forward at once, when the run is
    committed, and restores the originals in ``Sparsifier.remove()``.

    Args:
        model: the model the replaced modules belong to.

    Attributes:
        guarded: names of the ``nn.TransformerEncoderLayer`` modules that carry
            the guard now (empty while no forward is replaced).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.guarded: list[str] = []
        self._originals: list[tuple[nn.Module, Any]] = []
        self._guards: list[RemovableHandle] = []

    @property
    def modules(self) -> list[nn.Module]:
        """The modules whose forward is replaced now."""
        return [module for module, _ in self._originals]

    def install(self, forwards: Iterable[tuple[nn.Module, Callable[..., Any]]]) -> None:
        """Make each callable its module's forward, and guard the encoder layers that hold one.

        Args:
            forwards: ``(module, forward)`` pairs.
        """
        for module, forward in forwards:
            self._originals.append((module, module.__dict__.get("forward")))
            module.forward = forward
        self._guard()

    def _guard(self) -> None:
        replaced = {id(module) for module in self.modules}
        for handle in self._guards:
            handle.remove()
        self._guards.clear()
        self.guarded.clear()
        if not replaced:
            return
        for name, layer in self.model.named_modules():
            if isinstance(layer, nn.TransformerEncoderLayer) and any(id(m) in replaced for m in layer.modules()):
                self._guards.append(layer.register_forward_pre_hook(_keep_python_forward))
                self.guarded.append(name)

    def restore(self) -> None:
        """Put every original forward back and take the guard off (PyTorch chooses its fast path again).

        Calling it again does nothing.
        """
        for module, original in reversed(self._originals):
            if original is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = original
        self._originals.clear()
        self._guard()
