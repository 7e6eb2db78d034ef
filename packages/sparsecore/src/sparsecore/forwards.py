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

import copy
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from sparsecore.errors import ConfigurationError, HookResultError


def _keep_python_forward(module: nn.Module, args: Any) -> None:
    """The guard: present, it keeps ``nn.TransformerEncoderLayer`` off its fast path; it changes nothing."""


class ClosureForward:
    """A replaced forward given as a closure, made safe to deep-copy with its model.

    ``copy.deepcopy`` hands back a function itself, so a deep copy of the model
    (an EMA or teacher copy) would go on calling a closure over the original
    module's weights and mask. Deep-copying this wrapper copies what the
    closure captured with the same memo instead: the copy's forward reads the
    copy's own weights and a copy of the mask as it was at copy time.

    Args:
        function: the forward, a plain function with a closure.
    """

    def __init__(self, function: types.FunctionType) -> None:
        self.function = function
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> Any:
        raise TypeError(
            f"cannot pickle a model while sparsecore replaces a forward with the closure "
            f"{self.function.__qualname__!r}: save model.state_dict() and sparsifier.state_dict() instead, or "
            "detach the engine first (sparsecore.export.squash keeps the sparse weights and calls remove())")

    def __deepcopy__(self, memo: dict[int, Any]) -> ClosureForward:
        function = self.function
        cells = tuple(_copied_cell(cell, memo) for cell in function.__closure__ or ())
        copied = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                                    copy.deepcopy(function.__defaults__, memo), cells)
        copied.__kwdefaults__ = copy.deepcopy(function.__kwdefaults__, memo)
        copied.__qualname__ = function.__qualname__
        return ClosureForward(copied)


def _copied_cell(cell: types.CellType, memo: dict[int, Any]) -> types.CellType:
    try:
        contents = cell.cell_contents
    except ValueError:  # a cell not filled yet
        return types.CellType()
    return types.CellType(copy.deepcopy(contents, memo))


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

        A closure is installed wrapped in :class:`ClosureForward`, so that a
        deep copy of the model computes with its own weights.

        Args:
            forwards: ``(module, forward)`` pairs.
        """
        for module, forward in forwards:
            self._originals.append((module, module.__dict__.get("forward")))
            if isinstance(forward, types.FunctionType) and forward.__closure__:
                forward = ClosureForward(forward)  # a deep copy of the model must not call the original's weights
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


def collect_module_forwards(sparsifier: Any) -> list[tuple[nn.Module, Callable[..., Any]]]:
    """Every plugin's ``module_forwards`` answer for a run being set up, checked.

    Args:
        sparsifier: the engine (its ``model``, ``layers`` and plugin ``manager``).

    Returns:
        ``(module, forward)`` pairs to install with the layers' forwards.

    Raises:
        ConfigurationError: a plugin wraps the hook.
        HookResultError: an answer that is not a mapping, names a module the
            model does not have or a sparse layer, claims a module another
            plugin claimed, or maps to a non-callable.
    """
    hook = "module_forwards"
    modules = dict(sparsifier.model.named_modules())
    sparse = {name for name, module in modules.items()
              if any(layer.module is module for layer in sparsifier.layers.values())}
    claimed: dict[str, str] = {}
    pairs: list[tuple[nn.Module, Callable[..., Any]]] = []
    for impl in reversed(sparsifier.manager.hook.module_forwards.get_hookimpls()):
        who = impl.plugin_name
        if impl.wrapper or impl.hookwrapper:
            raise ConfigurationError(f"plugin {who!r} wraps {hook!r}; it takes plain implementations")
        answer = impl.function(*[{"sparsifier": sparsifier}[arg] for arg in impl.argnames])
        if answer is None:
            continue
        if not isinstance(answer, Mapping):
            raise HookResultError(hook, who, f"returned {type(answer).__name__}, expected a mapping of module "
                                             "name to forward")
        for name, forward in answer.items():
            if name not in modules:
                raise HookResultError(hook, who, f"names {name!r}, which is no module of the model")
            if name in sparse:
                raise HookResultError(hook, who, f"names sparse layer {name!r}; replace a sparse layer's forward "
                                                 "with 'layer_forward'")
            if name in claimed:
                raise HookResultError(hook, who, f"claims module {name!r}, which plugin {claimed[name]!r} "
                                                 "already replaces")
            if not callable(forward):
                raise HookResultError(hook, who, f"returned a non-callable for module {name!r}")
            claimed[name] = who
            pairs.append((modules[name], forward))
    return pairs
