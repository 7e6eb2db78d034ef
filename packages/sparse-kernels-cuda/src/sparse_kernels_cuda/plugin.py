"""The sparsecore plugin: replaces sparse Linear forwards with the fastest kernel per layer.

Activate it per run by name (``Sparsifier(..., plugins=["sparse-kernels-cuda"])``,
``sparsecore train --plugins sparse-kernels-cuda``) or as an object with options
(``plugins=[KernelPlugin(backend="csr")]``). Without options the backend comes
from the environment variable ``SPARSE_KERNELS_CUDA_BACKEND`` (default ``auto``).

What it changes: the layer's forward and backward products. What it does not
change: results (every backend equals masked dense up to reduction order),
the dense ``weight.grad`` (zero off the mask, as the engine's masking would
make it), the optimizer and its state.

It steps aside (keeps the module's own forward) where a kernel would change
what the algorithm sees: when the masking policy keeps gradients dense
(sparse momentum reads the momentum of inactive weights) or keeps weights
dense (SWAT), and for convolutions. An algorithm that owns a layer's forward
(SWAT) composes with it instead through the ``layer_products`` hook: the
plugin hands it :class:`~sparse_kernels_cuda.products.CsrProducts`, which
that algorithm's own forward and backward call. Per call, it runs masked dense under
autocast for the input's device (exactly the module's autocast behaviour) and,
unless a backend is forced, under ``torch.use_deterministic_algorithms(True)``
(no timing-dependent choice). Double backward (``create_graph=True``) through
the CSR backend raises; use ``backend="masked-dense"`` for higher-order gradients.

A layer whose forward the model never calls (the ``out_proj`` of an
``nn.MultiheadAttention``: ``layer.forward_bypass_reason`` says why) keeps its
own forward and runs masked dense (the engine keeps its weight masked and
never asks ``layer_forward`` for it); the plugin warns once per such layer.
While kernel forwards are installed the engine keeps
``nn.TransformerEncoderLayer``'s eval fast path off in the encoder layers that
hold them, so their ``linear1``/``linear2`` always run the kernels.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from sparse_kernels_cuda import _grad_pool
from sparse_kernels_cuda.backends import default_backends
from sparse_kernels_cuda.backends.base import detect_pattern
from sparse_kernels_cuda.backends.masked_dense import MaskedDenseBackend
from sparse_kernels_cuda.dispatch import DEFAULT_MAX_DENSITY, Dispatcher, DispatchKey, time_backend
from sparse_kernels_cuda.ops import autocast_active
from sparse_kernels_cuda.products import CsrProducts

try:  # the hook marker; only the registration below needs sparsecore itself
    from sparsecore.hookspecs import hookimpl
except ImportError:  # pragma: no cover - sparsecore is a dependency
    import pluggy

    hookimpl = pluggy.HookimplMarker("sparsecore")

__all__ = ["KernelPlugin", "LayerKernel", "sparsecore_register_plugins"]

PLUGIN_NAME = "sparse-kernels-cuda"
BACKEND_ENV = "SPARSE_KERNELS_CUDA_BACKEND"

log = logging.getLogger(__name__)


class LayerKernel:
    """The replacement forward of one sparse ``nn.Linear``.

    Reads ``layer.mask`` and ``layer.version`` at every call; formats are
    rebuilt only when the version changes.

    Args:
        layer: the engine's layer object.
        dispatcher: the run's dispatcher.
    """

    def __init__(self, layer: Any, dispatcher: Dispatcher) -> None:
        self.layer = layer
        self.dispatcher = dispatcher
        self._version: int | None = None
        self._pattern: str | None = None
        self._density = 0.0
        self._plans: dict[str, Any] = {}
        #: name of the backend used by the last call (for reports and tests)
        self.last_backend: str | None = None

    def invalidate(self) -> None:
        """Drop the formats built for the current mask."""
        self._version = None
        self._plans.clear()

    def _refresh(self) -> None:
        version = self.layer.version
        if version != self._version:
            mask = self.layer.mask
            self._plans.clear()
            self._pattern = detect_pattern(mask)
            self._density = round(float(mask.sum().item()) / max(1, mask.numel()), 3)
            self._version = version

    def plan(self, backend_name: str) -> Any:
        """The plan of ``backend_name`` for the current mask (built on first use)."""
        self._refresh()
        plan = self._plans.get(backend_name)
        if plan is None:
            mask = self.layer.mask
            plan = self.dispatcher.by_name(backend_name).plan(mask)
            self._plans[backend_name] = plan
        return plan

    def key(self, x: Tensor) -> DispatchKey:
        """The dispatch key of a call on ``x``."""
        self._refresh()
        w = self.layer.weight
        grad = torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)
        return DispatchKey(
            shape=(w.shape[0], w.shape[1]),
            tokens=x.numel() // max(1, x.shape[-1]),
            density=self._density,
            dtype=x.dtype,
            device=x.device.type,
            pattern=self._pattern or "unstructured",
            grad=grad,
            input_grad=grad and x.requires_grad,
        )

    def __call__(self, input: Tensor) -> Tensor:
        """``F.linear(input, weight ⊙ mask, bias)`` through the chosen backend.

        Masked dense (the fallback) when dtypes or devices differ, for nested
        tensors (``nn.TransformerEncoder``'s padded eval batches) and under
        autocast for the input's device, so the result has exactly the dtype
        and values of the module's own forward there.
        """
        w = self.layer.weight
        bias = self.layer.module.bias
        if (input.dtype != w.dtype or input.device != w.device or input.is_nested
                or autocast_active(input.device.type)):
            self.last_backend = self.dispatcher.fallback.name
            return self.dispatcher.fallback.linear(input, w, bias, self.layer.mask)
        key = self.key(input)

        def run(backend):
            return time_backend(backend, input, w, bias, self.plan(backend.name), key.grad, key.input_grad)

        backend = self.dispatcher.choose(key, run)
        self.last_backend = backend.name
        return backend.linear(input, w, bias, self.plan(backend.name))


class KernelPlugin:
    """sparsecore plugin that runs sparse layers on sparse kernels.

    Args:
        backend: ``"auto"`` (measure per layer), or one of ``"masked-dense"``,
            ``"csr"``, ``"triton-block"``, ``"2:4"`` to force it wherever it
            supports the layer (masked dense elsewhere). Default: the
            ``SPARSE_KERNELS_CUDA_BACKEND`` environment variable, else ``"auto"``.
            ``"auto"`` runs masked dense under deterministic algorithms.
        max_density: densest mask for which the CSR backend is even tried
            (default 0.2).
        margin: how much faster than masked dense a backend must measure.
        repeats: timed calls per candidate when deciding.
        grad_pool: reuse dense gradient buffers across steps (saves the
            page faults of a fresh multi-megabyte tensor per step on CPU).
        feature_major: CSR layers return the transposed ``(out, tokens)`` view
            instead of a contiguous result. Saves one copy per layer when every
            sparse layer feeds another CSR layer (through elementwise ops);
            ``view`` of the last dimension of such outputs fails (use ``reshape``).
    """

    def __init__(
        self,
        backend: str | None = None,
        max_density: float = DEFAULT_MAX_DENSITY,
        margin: float = 0.05,
        repeats: int = 3,
        grad_pool: bool = True,
        feature_major: bool = False,
    ) -> None:
        self.backend = backend or os.environ.get(BACKEND_ENV, "auto")
        self.feature_major = feature_major
        self.max_density = max_density
        self.margin = margin
        self.repeats = repeats
        self.grad_pool = grad_pool
        self.kernels: dict[str, LayerKernel] = {}
        #: layer name -> the products handed to an algorithm that owns the layer's forward (``layer_products``)
        self.products: dict[str, CsrProducts] = {}
        #: layer name -> why its forward cannot be replaced (it runs masked dense), for the last run set up
        self.bypassed: dict[str, str] = {}
        self._dispatcher: Dispatcher | None = None
        self._warned = False

    def dispatcher(self, premasked: bool) -> Dispatcher:
        """The run's dispatcher (created on first use)."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(
                default_backends(feature_major=self.feature_major),
                MaskedDenseBackend(premasked=premasked),
                force=self.backend,
                max_density=self.max_density,
                margin=self.margin,
                repeats=self.repeats,
            )
        return self._dispatcher

    @hookimpl
    def layer_forward(self, sparsifier: Any, layer: Any):
        """Return the kernel forward of a sparse ``nn.Linear``; ``None`` elsewhere.

        The engine asks only for layers whose forward the model calls.
        """
        if layer.kind != "linear" or not isinstance(layer.module, nn.Linear):
            return None
        policy = getattr(sparsifier, "policy", None)
        if policy is not None and _keeps_dense(policy):
            return None  # the algorithm's own forward may still ask for products (layer_products)
        _grad_pool.set_grad_pool_enabled(self.grad_pool)
        kernel = LayerKernel(layer, self.dispatcher(premasked=policy is not None))
        self.kernels[layer.name] = kernel
        return kernel

    @hookimpl
    def layer_products(self, sparsifier: Any, layer: Any) -> CsrProducts | None:
        """CSR products (:class:`~sparse_kernels_cuda.products.CsrProducts`) for a sparse ``nn.Linear``.

        For algorithms that own the layer's forward and call the products from
        their own autograd function (SWAT). With ``backend="auto"`` each product
        is timed once per shape against the dense op and the faster kept; with
        ``"csr"`` CSR always runs (within ``max_density``). ``None`` for other
        layers and when another backend is forced.
        """
        if layer.kind != "linear" or not isinstance(layer.module, nn.Linear) or self.backend not in ("auto", "csr"):
            return None
        products = CsrProducts(self.max_density, measure=self.backend == "auto", repeats=self.repeats)
        self.products[layer.name] = products
        return products

    @hookimpl
    def on_setup(self, sparsifier: Any) -> None:
        """Warn when the plugin changes nothing; note Linear layers whose forward the model never calls.

        When the algorithm keeps dense weights or gradients, kernels would
        change its results, so layers keep the algorithm's forward; unless that
        forward asked for :attr:`products`, one ``UserWarning`` says the plugin
        does nothing. Otherwise each sparse Linear layer the model reads
        without calling its forward gets one ``UserWarning``: it runs masked
        dense (:attr:`bypassed`; ``layer.forward_bypass_reason`` says why).
        """
        self.bypassed = {}
        policy = getattr(sparsifier, "policy", None)
        if policy is not None and _keeps_dense(policy):
            if not self.products and not self._warned:
                warnings.warn(
                    f"{PLUGIN_NAME}: the active algorithm keeps dense weights or gradients "
                    f"(mask_weights={policy.mask_weights}, mask_gradients={policy.mask_gradients}); "
                    "sparse kernels would change its results, so layers keep their own forward",
                    stacklevel=2,
                )
                self._warned = True
            return
        for layer in sparsifier.layers.values():
            reason = layer.forward_bypass_reason
            if reason is None or layer.kind != "linear":
                continue
            warnings.warn(f"{PLUGIN_NAME}: layer {layer.name!r} runs masked dense, not on a sparse kernel: {reason}",
                          stacklevel=2)
            self.bypassed[layer.name] = reason

    @hookimpl
    def on_topology_update(self, sparsifier: Any, report: Any) -> None:
        """Drop the formats of the old masks (rebuilt at the next forward)."""
        for kernel in self.kernels.values():
            kernel.invalidate()

    def summary(self) -> dict[str, str | None]:
        """Layer name -> backend used by its last forward (``"masked-dense"`` for the :attr:`bypassed` layers)."""
        used = {name: k.last_backend for name, k in self.kernels.items()}
        return {**used, **dict.fromkeys(self.bypassed, MaskedDenseBackend.name)}


def _keeps_dense(policy: Any) -> bool:
    """Whether the algorithm's masking policy keeps weights or gradients dense (kernels then step aside)."""
    return policy is not None and not (policy.mask_weights and policy.mask_gradients)


@hookimpl
def sparsecore_register_plugins(register) -> None:
    """Register ``"sparse-kernels-cuda"`` (a non-algorithm plugin activated by name)."""
    register(PLUGIN_NAME, KernelPlugin)
