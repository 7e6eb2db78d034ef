"""The ``swat`` algorithm: registration and hook implementations.

Registered through the entry-point group ``sparsecore``::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="swat", density=0.1,
                                       variant="uniform", period=1)

The dense weights are the trainable parameters (nothing is masked by the
engine); each sparse layer's forward is replaced by :class:`SwatForward`,
which selects the top-K weights and input activations on the fly.
``layer.mask`` reports the current weight selection: it is set at start-up
and refreshed at every epoch end (and by :meth:`SwatAlgorithm.sync_masks`);
these refreshes are not topology updates, so they add nothing to
``sparsifier.history`` and do not fire ``on_topology_update``.

A weight the model reads without calling its module's forward (an
``nn.MultiheadAttention``'s input projections and ``out_proj``) cannot run
SWAT: the engine leaves such layers dense for algorithms that keep dense
weights, with a ``UserWarning``, and lists them with the reason in
``sparsifier.dense_layers``. While SWAT's forwards are installed the engine
also keeps ``nn.TransformerEncoderLayer``'s eval fast path off in the encoder
layers that hold them, so their ``linear1``/``linear2`` always run SWAT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

import sparsecore
from sparsecore.optim_state import require_momentum
from sparsecore.products import layer_products
from sparsecore_swat.activations import activation_forwards
from sparsecore_swat.budget import momentum_budgets, momentum_shares
from sparsecore_swat.functional import SwatForward, layer_kind_of
from sparsecore_swat.options import check_choice, check_flag, check_fraction, check_period
from sparsecore_swat.state import TopKState
from sparsecore_swat.topk import check_structure

VARIANTS = ("uniform", "erk", "momentum")
ACTIVATION_MEMORY = ("model", "layers")
_MOMENTUM_HINT = ("use an optimizer with momentum (SGD with momentum > 0 or an Adam-family optimizer), "
                  "or another variant ('uniform' or 'erk')")


class SwatAlgorithm(sparsecore.Algorithm):
    """SWAT (Raihan & Aamodt 2020): sparse weights and activations in forward and backward.

    Args:
        variant: ``"uniform"`` (SWAT-U: every sparse layer at the overall
            density), ``"erk"`` (SWAT-ERK: the engine's ERK distribution) or
            ``"momentum"`` (SWAT-M: per-layer budgets recomputed after every
            optimizer step from normalised mean momentum).
        structure: ``None`` (element-wise), ``"channel"`` (whole kernel slices
            ``W[o, i]`` by L1 norm) or ``"filter"`` (whole output filters).
            Activations are always selected element-wise.
        activation_density: fraction of input activations kept for the weight
            gradient in every sparse layer; ``None`` uses each layer's weight
            density, as the reference does.
        period: in convolution layers, recompute the top-K thresholds on the
            first training forward call of each epoch and every ``period``-th
            call after it, and reuse them in between, as the reference's
            ``batch_idx % period`` does (its CIFAR run configurations use 20);
            1 is exact every step. Structured variants reuse only the
            activation threshold (their weight selection is exact on every
            call); linear layers use the exact top-K on every call whatever
            the period, as the reference does.
        sparsify_first_layer: make the first prunable layer sparse. Default:
            ``False`` for ``uniform`` (SWAT-U), ``True`` for ``erk`` and
            ``momentum`` (SWAT-ERK and SWAT-M sparsify it in the reference).
        sparsify_last_layer: make the last prunable layer sparse (default ``True``).
        activation_memory: ``"model"`` (default): the model's BatchNorm, ReLU and
            max-pool modules get forwards that save less for backward, and SWAT
            layers fed by them save only a threshold
            (:mod:`sparsecore_swat.activations`; gradients unchanged, the
            backward recomputes a batch norm per such module); ``"layers"``:
            only SWAT layers save less (their compressed top-K input).

    Raises:
        sparsecore.ConfigurationError: a bad option (naming it): an unknown
            variant or structure, an activation density outside (0, 1], a
            period that is not an integer >= 1, a flag that is not a bool, an
            ``activation_memory`` other than ``"model"`` or ``"layers"``;
            ``variant="momentum"`` with an optimizer
            that keeps no momentum (at set-up for a zero ``momentum`` option,
            otherwise at the first optimizer step that leaves no sparse layer
            with momentum).

    Attributes:
        states: layer name to its :class:`TopKState`.
    """

    name = "swat"
    sets_initial_density = True  # structured top-K keeps whole slices, so a layer may miss its target density
    masking_policy = sparsecore.MaskingPolicy(mask_weights=False, mask_gradients=False,
                                              mask_optimizer_state=False, reset_grown_state=False)

    def __init__(self, variant: str = "uniform", structure: str | None = None,
                 activation_density: float | None = None, period: int = 1,
                 sparsify_first_layer: bool | None = None, sparsify_last_layer: bool = True,
                 activation_memory: str = "model") -> None:
        self.variant = check_choice(variant, "variant", VARIANTS)
        self.structure = check_structure(structure)
        self.activation_density = (None if activation_density is None
                                   else check_fraction(activation_density, "activation_density"))
        self.period = check_period(period)
        if check_flag(sparsify_first_layer, "sparsify_first_layer", allow_none=True) is None:
            sparsify_first_layer = variant in ("erk", "momentum")
        self.sparsify_first_layer = sparsify_first_layer
        self.sparsify_last_layer = check_flag(sparsify_last_layer, "sparsify_last_layer")
        self.activation_memory = check_choice(activation_memory, "activation_memory", ACTIVATION_MEMORY)
        #: Distribution (ERK for SWAT-ERK) and which end layers stay dense, unless the user says otherwise.
        self.engine_defaults = {
            "distribution": "erk" if variant == "erk" else "uniform",
            "dense_first_layer": not self.sparsify_first_layer,
            "dense_last_layer": not self.sparsify_last_layer,
        }
        #: layer name -> :class:`TopKState`, filled while the sparsifier is built.
        self.states: dict[str, TopKState] = {}
        self._pending_state: dict[str, Any] | None = None

    # -- set-up ---------------------------------------------------------------
    def state_for(self, layer: sparsecore.SparseLayer) -> TopKState:
        """The :class:`TopKState` of a sparse layer, created at its target density on first use."""
        state = self.states.get(layer.name)
        if state is None:
            state = TopKState(layer.target_density, self.activation_density, self.period, self.structure,
                              self._layer_kind(layer))
            self.states[layer.name] = state
        return state

    @staticmethod
    def _layer_kind(layer: sparsecore.SparseLayer) -> str:
        try:
            return layer_kind_of(layer.module)
        except TypeError:
            return "conv"  # an unsupported module; layer_forward refuses it with the full message

    @sparsecore.hookimpl
    def init_masks(self, sparsifier: sparsecore.Sparsifier,
                   layers: Mapping[str, sparsecore.SparseLayer]) -> dict[str, torch.Tensor]:
        """Report the initial top-K selection of each layer's weights as its mask.

        The check below runs before the engine replaces any forward or hooks
        the optimizer, so a refused run leaves the model untouched.

        Raises:
            sparsecore.ConfigurationError: SWAT-M with an optimizer whose
                ``momentum`` option is 0 for the sparse weights.
        """
        if self.variant == "momentum":
            self._check_optimizer_has_momentum(sparsifier.optimizer, layers)
        return {name: self.state_for(layer).weight_mask(layer.weight) for name, layer in layers.items()}

    @sparsecore.hookimpl
    def layer_forward(self, sparsifier: sparsecore.Sparsifier,
                      layer: sparsecore.SparseLayer) -> Callable[..., Any] | None:
        """SWAT's forward for ``Linear`` and ``Conv1d/2d/3d`` layers.

        A ``Linear`` layer's forward runs its products on the sparse kernels a
        plugin offers for it (``sparsecore.products.layer_products``, e.g.
        ``plugins=["sparse-kernels-cuda"]``): the top-K-weight forward and
        input gradient, and the weight gradient from the top-K activations.

        Raises:
            sparsecore.ConfigurationError: the layer's module is of another
                type (it would silently run dense); the set-up is refused.
        """
        try:
            forward = SwatForward(layer.module, self.state_for(layer))
        except TypeError as err:
            raise sparsecore.ConfigurationError(
                f"{err} (layer {layer.name!r}); exclude it from the sparse layers") from None
        if forward.kind == "linear":
            forward.products = layer_products(sparsifier, layer)
        return forward

    @sparsecore.hookimpl
    def module_forwards(self, sparsifier: sparsecore.Sparsifier) -> dict[str, Callable[..., Any]] | None:
        """With ``activation_memory="model"``: forwards that save less for the model's BatchNorm, ReLU and max-pools."""
        if self.activation_memory != "model":
            return None
        return activation_forwards(sparsifier.model)

    @sparsecore.hookimpl
    def on_setup(self, sparsifier: sparsecore.Sparsifier) -> None:
        """Apply state restored before the layers existed (see :meth:`load_state_dict`)."""
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    @sparsecore.hookimpl
    def layer_train_flops(self, sparsifier: sparsecore.Sparsifier,
                          layer: sparsecore.SparseLayer) -> tuple[int, int] | None:
        """Training FLOPs per sample: top-K weights forward and for dx, top-K activations for dW.

        With ``P = layer.output_positions``, ``d_w``/``d_a`` the layer's weight
        and activation densities: forward ``2·d_w·|W|·P``, backward
        ``2·d_w·|W|·P + 2·d_a·|W|·P`` (the weight gradient is dense-shaped, but
        each product only involves the kept input activations).
        """
        state = self.states.get(layer.name)
        if state is None or layer.output_positions is None:
            return None
        positions, numel = layer.output_positions, layer.capacity
        weights = round(state.weight_density * numel)
        activations = round(state.activation_density * numel)
        return 2 * weights * positions, 2 * weights * positions + 2 * activations * positions

    # -- training loop ----------------------------------------------------------
    @sparsecore.hookimpl
    def on_step(self, sparsifier: sparsecore.Sparsifier) -> None:
        """SWAT-M: recompute every layer's density from its momentum after each step.

        Raises:
            sparsecore.ConfigurationError: SWAT-M and, after this step, no
                sparse layer has momentum (the optimizer keeps none).
        """
        if self.variant != "momentum":
            return
        momenta = self._momenta(sparsifier)
        if all(m is None for m in momenta.values()):
            raise sparsecore.ConfigurationError(
                f"swat: variant='momentum' (SWAT-M) sets the layer budgets from the optimizer's momentum, but after "
                f"optimizer step {sparsifier.step} no sparse layer has a momentum buffer "
                f"({type(sparsifier.optimizer).__name__} keeps none); {_MOMENTUM_HINT}")
        self._set_momentum_budgets(sparsifier, momenta)

    @sparsecore.hookimpl
    def on_epoch_end(self, sparsifier: sparsecore.Sparsifier) -> None:
        """Restart every layer's recompute count for the next epoch, then refresh ``layer.mask`` for reports."""
        for state in self.states.values():
            state.start_epoch()
        self.sync_masks(sparsifier)

    def update_momentum_budgets(self, sparsifier: sparsecore.Sparsifier) -> dict[str, float]:
        """Set each layer's density from normalised mean ``|momentum|`` over its selected weights.

        The overall budget is the engine's ``density`` over the sparse layers
        (``sum(target_density * numel)``). While any layer has no momentum yet
        (before the optimizer's first step) the budgets stay unchanged.

        Returns:
            Layer name to its new weight density (empty when nothing changed).
        """
        return self._set_momentum_budgets(sparsifier, self._momenta(sparsifier))

    def _momenta(self, sparsifier: sparsecore.Sparsifier) -> dict[str, torch.Tensor | None]:
        return {name: sparsifier.momentum(layer) for name, layer in sparsifier.layers.items()}

    @staticmethod
    def _check_optimizer_has_momentum(optimizer: torch.optim.Optimizer,
                                      layers: Mapping[str, sparsecore.SparseLayer]) -> None:
        require_momentum(optimizer, "swat: variant='momentum' (SWAT-M)",
                         "it sets the layer budgets from the optimizer's momentum",
                         params=[layer.weight for layer in layers.values()], hint=_MOMENTUM_HINT)

    def _set_momentum_budgets(self, sparsifier: sparsecore.Sparsifier,
                              momenta: Mapping[str, torch.Tensor | None]) -> dict[str, float]:
        layers = sparsifier.layers
        means: dict[str, float] = {}
        for name, layer in layers.items():
            momentum = momenta[name]
            if momentum is None:
                return {}
            selected = self.state_for(layer).weight_mask(layer.weight)
            means[name] = float(momentum.detach().abs()[selected].mean()) if bool(selected.any()) else 0.0
        sizes = {name: layer.capacity for name, layer in layers.items()}
        overall = sum(layer.target_density * layer.capacity for layer in layers.values()) / sum(sizes.values())
        densities = momentum_budgets(sizes, momentum_shares(means), overall)
        for name, density in densities.items():
            self.states[name].weight_density = density
        return densities

    def sync_masks(self, sparsifier: sparsecore.Sparsifier) -> None:
        """Write each layer's current weight selection to ``layer.mask``.

        Uses ``set_masks(record=False)``: the selection lives in the forward,
        so the refresh is no topology update (nothing is appended to
        ``sparsifier.history`` and ``on_topology_update`` is not called).
        """
        masks = {name: self.state_for(layer).weight_mask(layer.weight) for name, layer in sparsifier.layers.items()}
        sparsifier.set_masks(masks, record=False)

    # -- checkpointing ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Per-layer thresholds, densities and call counts (``weights_only``-loadable)."""
        return {"states": {name: state.state_dict() for name, state in self.states.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; layers not built yet are restored at ``on_setup``.

        Raises:
            ValueError: the checkpoint has state for layers this run does not have.
        """
        saved = state["states"]
        if not self.states:
            self._pending_state = dict(state)
            return
        unknown = sorted(set(saved) - set(self.states))
        if unknown:
            raise ValueError(f"swat: checkpoint has state for unknown layers {unknown}")
        for name, layer_state in saved.items():
            self.states[name].load_state_dict(layer_state)
        self._pending_state = None

    def __repr__(self) -> str:
        return (f"SwatAlgorithm(variant={self.variant!r}, structure={self.structure!r}, "
                f"activation_density={self.activation_density}, period={self.period}, "
                f"activation_memory={self.activation_memory!r})")


@sparsecore.hookimpl
def sparsecore_register_algorithms(register: Callable[..., None]) -> None:
    """Register the ``swat`` algorithm."""
    register("swat", SwatAlgorithm)
