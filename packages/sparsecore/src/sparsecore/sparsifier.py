"""The sparse training engine."""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from sparsecore import distributed, distributions, optim_state, selection
from sparsecore.errors import CheckpointError, ConfigurationError, HookResultError, NoPrunableLayersError
from sparsecore.layers import DEFAULT_LAYER_TYPES, SparseLayer
from sparsecore.plugins import RunManager, instantiate, plugin_display_name, registry
from sparsecore.policy import MaskingPolicy
from sparsecore.reporting import DensityReport, LayerUpdate, TopologyReport, default_train_flops, layer_stats

STATE_FORMAT = 1
DEFAULT_DENSITY = 0.05
_ENGINE_DEFAULT_KEYS = ("density", "distribution", "dense_first_layer", "dense_last_layer", "include", "exclude", "layer_types")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _patterns(key: str, value: Any) -> tuple[str, ...]:
    """``include``/``exclude`` as a tuple of glob patterns; a single string is one pattern."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    patterns = tuple(value)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise ConfigurationError(f"{key} must be glob patterns (strings), got {bad!r}")
    return patterns


class Sparsifier:
    """Keeps a model's weights sparse through training and runs its algorithm's hooks.

    The engine finds the prunable layers, gives each a density from the
    distribution, asks the plugins for initial masks, and then keeps the masks
    applied after every optimizer step through the optimizer's step hooks (no
    call needed in the training loop besides :meth:`epoch_end`).

    Example:
        ```python
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="set", density=0.05,
                                           total_steps=len(loader) * epochs)
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
            sparsifier.epoch_end(epoch)
        ```

    Args:
        model: the model (plain, or wrapped in DDP/DataParallel).
        optimizer: the optimizer that holds the model's weights.
        algorithm: a registered algorithm name (``available_algorithms()``) or a
            plugin object implementing the hooks.
        density: fraction of weights kept over all sparse layers, in (0, 1];
            ``None``: the algorithm's default (``engine_defaults``), else 0.05.
        distribution: ``"uniform"``, ``"erk"``, ``"er"``, a mapping of layer name
            to density, or a callable; default ``"uniform"`` unless the
            algorithm's ``engine_defaults`` say otherwise.
        total_steps: optimizer steps in the whole run, for schedules that span
            training (``len(loader) * epochs``).
        plugins: extra plugins for this run: objects, or names of registered
            non-algorithm plugins. They take precedence over the algorithm.
        dense_first_layer: keep the first prunable layer dense.
        dense_last_layer: keep the last prunable layer dense.
        include: glob patterns of module names to make sparse (default: all
            prunable); a single string is one pattern.
        exclude: glob patterns of module names to keep dense (a string is one pattern).
        layer_types: module types to make sparse (default Linear and Conv1d/2d/3d).
            A weight shared by several modules (tied weights) is one sparse
            layer, named after its first module; empty weights are skipped.
        seed: seed of :attr:`generator`; by default drawn from torch's global RNG.
        block: ``(rows, cols)`` to keep every sparse layer block-sparse: masks,
            prune/grow choices and counts come in whole blocks of the weight seen
            as a ``shape[0] x prod(shape[1:])`` matrix (for block-sparse kernels).
            Every sparse layer must divide into such blocks; keep the others
            dense with ``exclude`` or ``dense_last_layer``.
        algorithm_options: options passed to the algorithm's factory.
        **options: more algorithm options (merged into ``algorithm_options``).

    Attributes:
        layers: name → :class:`SparseLayer`, in model order.
        density: the overall density asked for.
        step: optimizer steps completed (steps GradScaler skipped do not count).
        epoch: the last epoch reported to :meth:`epoch_end` (``None`` before).
        total_steps: the run's length in optimizer steps, if given.
        generator: ``torch.Generator`` for random choices, identical on every DDP rank.
        policy: the :class:`MaskingPolicy` in force.
        algorithm: the active algorithm's plugin object; ``algorithm_name`` its name.
        history: the :class:`TopologyReport` of every recorded update.

    Raises:
        ConfigurationError: bad density, distribution, option or layer selection.
        UnknownAlgorithmError: an algorithm or plugin name nobody registered.
        NoPrunableLayersError: the model has no layer to make sparse.
        HookResultError: a plugin's answer broke its hook's contract.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, algorithm: str | Any = "set",
                 density: float | None = None, distribution: str | Mapping[str, float] | Callable | None = None,
                 total_steps: int | None = None, plugins: Sequence[Any] = (), *,
                 dense_first_layer: bool | None = None, dense_last_layer: bool | None = None,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                 layer_types: Sequence[type[nn.Module]] | None = None, seed: int | None = None,
                 block: Sequence[int] | None = None,
                 algorithm_options: Mapping[str, Any] | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if density is not None:
            distributions.check_density(density)  # fail before any plugin is built
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps <= 0):
            raise ConfigurationError(f"total_steps must be a positive int or None, got {total_steps!r}")
        self.model = unwrap_model(model)
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.step = 0
        self.epoch: int | None = None
        self.steps_per_epoch: int | None = None
        self._epoch_start_step = 0
        self.history: list[TopologyReport] = []
        self._handles: list[Any] = []
        self._original_forwards: dict[str, Any] = {}
        self._mask_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        # -- plugins ---------------------------------------------------------
        all_options = {**(algorithm_options or {}), **options}
        if isinstance(algorithm, str):
            reg = registry.algorithm(algorithm)
            self.algorithm_name = algorithm
            self.algorithm = instantiate(reg, all_options)
        else:
            if all_options:
                raise ConfigurationError("algorithm options can only be given with an algorithm name; "
                                         f"configure the plugin object directly instead of passing {sorted(all_options)}")
            self.algorithm_name = plugin_display_name(algorithm)
            self.algorithm = algorithm
        if isinstance(plugins, str) or not isinstance(plugins, Iterable):
            plugins = [plugins]  # one plugin name or object
        extra = [self._resolve_plugin(p) for p in plugins]
        self.manager = RunManager(self.algorithm, self.algorithm_name, extra)
        self.plugins = [p for _, p in extra]

        # -- layers ----------------------------------------------------------
        defaults, who = self.manager.call_first("engine_defaults")
        if not isinstance(defaults, Mapping):
            raise HookResultError("engine_defaults", who, f"must return a mapping, got {type(defaults).__name__}")
        unknown = sorted(set(defaults) - set(_ENGINE_DEFAULT_KEYS), key=str)
        if unknown:
            raise HookResultError("engine_defaults", who, f"sets unknown option(s) {unknown}; "
                                                          f"known: {list(_ENGINE_DEFAULT_KEYS)}")
        self.density = distributions.check_density(
            density if density is not None else defaults.get("density", DEFAULT_DENSITY))
        given = {"distribution": distribution, "dense_first_layer": dense_first_layer,
                 "dense_last_layer": dense_last_layer, "include": include, "exclude": exclude,
                 "layer_types": layer_types}
        cfg = {k: (v if v is not None else defaults.get(k)) for k, v in given.items()}
        self.distribution = cfg["distribution"] or "uniform"
        self.layers: dict[str, SparseLayer] = self._select_layers(cfg)
        self.block = self._set_blocks(block)
        shapes = {name: tuple(layer.shape) for name, layer in self.layers.items()}
        for name, d in distributions.resolve(self.distribution, shapes, self.density).items():
            self.layers[name].target_density = d

        # -- randomness: one generator, identical on every rank ----------------
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if distributed.is_distributed():
            seed = distributed.broadcast_int(seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

        # -- policy, masks, forwards, optimizer hooks -------------------------
        policy, who = self.manager.call_first("masking_policy", sparsifier=self)
        if not isinstance(policy, MaskingPolicy):
            raise HookResultError("masking_policy", who, f"must return a MaskingPolicy, got {type(policy).__name__}")
        self.policy = policy
        masks, who = self.manager.call_first("init_masks", sparsifier=self, layers=self.layers)
        self._commit_masks(self._check_masks("init_masks", who, masks), reason="init", rate=None, notify=False)
        empty = [name for name, layer in self.layers.items() if layer.nnz == 0]
        if empty:
            warnings.warn(f"sparse layer(s) {empty} start with no active weight (init_masks of {who!r} at density "
                          f"{self.density}): they pass no signal; raise the density or keep them dense with "
                          "exclude=[...]", UserWarning, stacklevel=2)
        try:
            self._install_forwards()
            self._record_output_sizes()
            self._handles.append(optimizer.register_step_pre_hook(self._before_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_step))
            self.manager.hook.on_setup(sparsifier=self)
        except BaseException:
            self.remove()  # a refused set-up leaves no hook on the optimizer and no replaced forward
            raise

    # ------------------------------------------------------------------
    # set-up helpers
    # ------------------------------------------------------------------
    def _resolve_plugin(self, plugin: Any) -> tuple[str, Any]:
        if isinstance(plugin, str):
            reg = registry.plugin(plugin)
            return plugin, instantiate(reg, {})
        if isinstance(plugin, type):
            raise ConfigurationError(f"plugin {plugin.__name__} was passed as a class; pass an instance: {plugin.__name__}()")
        registry.load()
        for name, reg in registry.algorithms.items():
            if isinstance(reg.factory, type) and type(plugin) is reg.factory:
                raise ConfigurationError(
                    f"plugins=[...] holds an instance of algorithm {name!r} while the run's algorithm is "
                    f"{self.algorithm_name!r}; a run activates exactly one algorithm: pass it as algorithm= instead")
        return plugin_display_name(plugin), plugin

    def _select_layers(self, cfg: Mapping[str, Any]) -> dict[str, SparseLayer]:
        types = tuple(cfg["layer_types"] or DEFAULT_LAYER_TYPES)
        kinds = {t: DEFAULT_LAYER_TYPES.get(t, t.__name__.lower()) for t in types}
        candidates: list[tuple[str, nn.Module]] = []
        seen: set[int] = set()
        for name, module in self.model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, types) and isinstance(weight, nn.Parameter) and weight.requires_grad:
                # a weight shared by several modules (tied weights) is one sparse layer, named after its first
                # module; an empty weight has nothing to prune
                if id(weight) in seen or weight.numel() == 0:
                    continue
                seen.add(id(weight))
                candidates.append((name, module))
        if not candidates:
            found = sorted({type(m).__name__ for m in self.model.modules()})
            raise NoPrunableLayersError(
                f"model {type(self.model).__name__} has no prunable layer (looked for "
                f"{', '.join(t.__name__ for t in types)} with a trainable weight; found modules: {', '.join(found)})")
        names = [n for n, _ in candidates]
        for key in ("include", "exclude"):
            cfg = {**cfg, key: _patterns(key, cfg[key])}
            for pattern in cfg[key]:
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    raise ConfigurationError(f"{key} pattern {pattern!r} matches no prunable layer; layers are {names}")
        chosen = candidates
        if cfg["include"]:
            chosen = [(n, m) for n, m in chosen if any(fnmatch.fnmatchcase(n, p) for p in cfg["include"])]
        if cfg["exclude"]:
            chosen = [(n, m) for n, m in chosen if not any(fnmatch.fnmatchcase(n, p) for p in cfg["exclude"])]
        if cfg["dense_first_layer"] and chosen and chosen[0][0] == names[0]:
            chosen = chosen[1:]
        if cfg["dense_last_layer"] and chosen and chosen[-1][0] == names[-1]:
            chosen = chosen[:-1]
        if not chosen:
            raise NoPrunableLayersError(f"the layer selection leaves no sparse layer (prunable layers: {names})")
        in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        layers: dict[str, SparseLayer] = {}
        for i, (name, module) in enumerate(chosen):
            if id(module.weight) not in in_optimizer:
                raise ConfigurationError(f"the weight of layer {name!r} is not in the optimizer's parameter groups")
            kind = next(k for t, k in kinds.items() if isinstance(module, t))
            layers[name] = SparseLayer(name, module, kind, i, self.density)
        return layers

    def _set_blocks(self, block: Sequence[int] | None) -> tuple[int, int] | None:
        if block is None:
            return None
        if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
            raise ConfigurationError(f"block must be two positive ints (rows, cols), got {block!r}")
        block = (int(block[0]), int(block[1]))
        for layer in self.layers.values():
            try:
                selection.block_view_shape(layer.shape, block)
            except ValueError as exc:
                raise ConfigurationError(f"layer {layer.name!r}: {exc}; keep it dense with exclude=[{layer.name!r}] "
                                         "(or dense_first_layer/dense_last_layer)") from None
            layer.block = block
        return block

    def _install_forwards(self) -> None:
        for name, layer in self.layers.items():
            forward, who = self.manager.call_first_or_none("layer_forward", sparsifier=self, layer=layer)
            if forward is None:
                continue
            if not callable(forward):
                raise HookResultError("layer_forward", who, f"returned a non-callable for layer {name!r}")
            self._original_forwards[name] = layer.module.__dict__.get("forward")
            layer.module.forward = forward

    def _record_output_sizes(self) -> None:
        def make(layer: SparseLayer):
            def hook(module, args, output):
                if torch.is_tensor(output) and output.dim() >= 2:
                    layer.output_positions = math.prod(output.shape[2:]) if layer.kind.startswith("conv") \
                        else math.prod(output.shape[1:-1])
                handle = layer.__dict__.pop("_size_hook", None)
                if handle is not None:
                    handle.remove()
            return hook

        for layer in self.layers.values():
            layer.__dict__["_size_hook"] = layer.module.register_forward_hook(make(layer))

    # ------------------------------------------------------------------
    # optimizer hooks
    # ------------------------------------------------------------------
    def _before_step(self, optimizer, args, kwargs) -> None:
        if self._step_was_skipped(optimizer, kwargs):
            return
        self.manager.hook.before_optimizer_step(sparsifier=self, step=self.step)
        if self.policy.mask_gradients:
            for layer in self.layers.values():
                grad = layer.weight.grad
                if grad is not None:
                    grad.mul_(self._mask_like(layer, grad))

    def _mask_like(self, layer: SparseLayer, tensor: torch.Tensor) -> torch.Tensor:
        # Multiplying by a bool mask takes a slow mixed-dtype path (about 7x a same-dtype multiply on
        # CPU), so the per-step hooks use a copy of the mask in the tensor's dtype, rebuilt whenever
        # the engine replaces the mask (it never changes a mask in place).
        cached = self._mask_cache.get(layer.name)
        if cached is None or cached[0] is not layer.mask or cached[1].dtype != tensor.dtype \
                or cached[1].device != tensor.device:
            cached = (layer.mask, layer.mask.to(device=tensor.device, dtype=tensor.dtype))
            self._mask_cache[layer.name] = cached
        return cached[1]

    @staticmethod
    def _step_was_skipped(optimizer, kwargs) -> bool:
        # GradScaler steps optimizers that support AMP scaling (fused ones) even on inf/nan and
        # hands them ``found_inf`` (an attribute during the step, or the scaler as a kwarg).
        found_inf = getattr(optimizer, "found_inf", None)
        if torch.is_tensor(found_inf):
            return bool(found_inf.item())
        scaler = kwargs.get("grad_scaler") if kwargs else None
        if scaler is not None:
            return any(bool(v.item()) for v in scaler._check_inf_per_device(optimizer).values())
        return False

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self._step_was_skipped(optimizer, kwargs):
            return
        if self.policy.mask_weights:
            with torch.no_grad():
                for layer in self.layers.values():
                    layer.weight.mul_(self._mask_like(layer, layer.weight))
        self.step += 1
        self.manager.hook.on_step(sparsifier=self, step=self.step)

    # ------------------------------------------------------------------
    # training loop API
    # ------------------------------------------------------------------
    def epoch_end(self, epoch: int) -> None:
        """Tell the engine an epoch ended; calls the ``on_epoch_end`` hook.

        Args:
            epoch: the epoch that ended, as the loop numbers it.
        """
        if self.steps_per_epoch is None and self.step > self._epoch_start_step:
            self.steps_per_epoch = self.step - self._epoch_start_step
        self._epoch_start_step = self.step
        self.epoch = epoch
        self.manager.hook.on_epoch_end(sparsifier=self, epoch=epoch)

    def is_final_epoch(self, epoch: int | None = None) -> bool:
        """Whether the epoch that just ended is the run's last one.

        True once the optimizer steps reach ``total_steps`` (within half an
        epoch, for loaders whose length does not divide it). Always False
        without ``total_steps``.
        """
        if self.total_steps is None:
            return False
        slack = (self.steps_per_epoch or 0) // 2
        return self.step + slack >= self.total_steps

    @property
    def progress(self) -> float:
        """Fraction of ``total_steps`` done (0 without ``total_steps``)."""
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def momentum(self, layer: SparseLayer | str) -> torch.Tensor | None:
        """Momentum of a layer's weight: SGD's buffer or Adam's normalised first moment."""
        layer = self.layers[layer] if isinstance(layer, str) else layer
        return optim_state.momentum(self.optimizer, layer.weight)

    def optimizer_state(self, layer: SparseLayer | str) -> dict[str, torch.Tensor]:
        """The optimizer's per-element state tensors of a layer's weight."""
        layer = self.layers[layer] if isinstance(layer, str) else layer
        return optim_state.weight_state(self.optimizer, layer.weight)

    # ------------------------------------------------------------------
    # topology
    # ------------------------------------------------------------------
    def update_topology(self, rate: float) -> TopologyReport:
        """Run one prune → redistribute → grow cycle over every sparse layer.

        Args:
            rate: the prune rate handed to ``prune_counts`` (a fraction of active weights).

        Returns:
            The :class:`TopologyReport` of the update (also in :attr:`history`).

        Raises:
            HookResultError: a plugin returned a wrong type, shape, or count,
                pruned an inactive weight, grew an active one, or exceeded a
                layer's capacity.
        """
        rate = float(rate)
        if not (0.0 <= rate <= 1.0):
            raise ConfigurationError(f"prune rate must be in [0, 1], got {rate}")
        counts, who = self.manager.call_first("prune_counts", sparsifier=self, layers=self.layers, rate=rate)
        counts = self._check_counts("prune_counts", who, counts, {n: l.nnz for n, l in self.layers.items()},
                                    "its active weights")
        new_masks = {name: layer.mask.clone() for name, layer in self.layers.items()}
        old_masks = {name: layer.mask for name, layer in self.layers.items()}
        try:
            for name, layer in self.layers.items():
                chosen, who = self.manager.call_first("select_prune", sparsifier=self, layer=layer, n=counts[name])
                self._check_selection("select_prune", who, layer, chosen, counts[name], layer.mask, "active")
                layer.mask = layer.mask & ~chosen
            removed = dict(counts)
            free = {name: layer.capacity - layer.nnz for name, layer in self.layers.items()}
            regrow, who = self.manager.call_first("redistribute", sparsifier=self, layers=self.layers, removed=removed)
            regrow = self._check_counts("redistribute", who, regrow, free, "its free slots (capacity - nnz)")
            for name, layer in self.layers.items():
                chosen, who = self.manager.call_first("select_grow", sparsifier=self, layer=layer, n=regrow[name])
                self._check_selection("select_grow", who, layer, chosen, regrow[name], ~layer.mask, "inactive")
                layer.mask = layer.mask | chosen
            for name, layer in self.layers.items():
                new_masks[name] = layer.mask
        finally:  # on error the previous masks stay in force
            for name, layer in self.layers.items():
                layer.mask = old_masks[name]
        return self._commit_masks(new_masks, reason="update", rate=rate)

    def set_masks(self, masks: Mapping[str, torch.Tensor], record: bool = True) -> TopologyReport:
        """Replace the masks of some or all layers (e.g. DSD's phase changes).

        Weights and optimizer state follow the masking policy exactly as after
        a topology update.

        Args:
            masks: layer name to bool tensor shaped like the weight.
            record: append the report to :attr:`history` and call
                ``on_topology_update``. ``False`` for frequent refreshes that
                only keep ``layer.mask`` describing a selection the forward makes
                itself (SWAT).

        Returns:
            The :class:`TopologyReport` (reason ``"set_masks"``).
        """
        full = {name: layer.mask for name, layer in self.layers.items()}
        full.update(self._check_masks("set_masks", "<caller>", masks, partial=True))
        return self._commit_masks(full, reason="set_masks", rate=None, notify=record)

    def _commit_masks(self, masks: Mapping[str, torch.Tensor], reason: str, rate: float | None,
                      notify: bool = True) -> TopologyReport:
        if distributed.is_distributed():
            distributed.broadcast_masks(masks.values())
        updates: dict[str, LayerUpdate] = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                new, old = masks[name], layer.mask
                grown, pruned = new & ~old, old & ~new
                n_grown, n_pruned = int(grown.sum()), int(pruned.sum())
                if reason == "init" or n_grown or n_pruned:
                    layer.mask = new
                    layer.version += 1
                if self.policy.mask_weights:
                    layer.weight.mul_(new)
                if reason == "init":
                    if self.policy.mask_optimizer_state:
                        optim_state.zero_state(self.optimizer, layer.weight, ~new)
                else:
                    if self.policy.reset_grown_state and n_grown:
                        optim_state.zero_state(self.optimizer, layer.weight, grown)
                    if self.policy.mask_optimizer_state and n_pruned:
                        optim_state.zero_state(self.optimizer, layer.weight, ~new)
                updates[name] = LayerUpdate(n_pruned, n_grown, int(new.sum()), float(new.sum()) / new.numel())
        report = TopologyReport(self.step, self.epoch, rate, updates, reason)
        if notify:
            self.history.append(report)
            self.manager.hook.on_topology_update(sparsifier=self, report=report)
        return report

    # ------------------------------------------------------------------
    # validation of hook answers
    # ------------------------------------------------------------------
    def _check_masks(self, hook: str, who: str, masks: Any, partial: bool = False) -> dict[str, torch.Tensor]:
        if not isinstance(masks, Mapping):
            raise HookResultError(hook, who, f"must return a mapping of layer name to bool mask, got {type(masks).__name__}")
        unknown = sorted(set(masks) - set(self.layers))
        missing = [] if partial else [n for n in self.layers if n not in masks]
        if unknown or missing:
            raise HookResultError(hook, who, f"masks do not match the sparse layers: missing {missing}, unknown {unknown}")
        out = {}
        for name, mask in masks.items():
            layer = self.layers[name]
            self._check_tensor(hook, who, layer, mask)
            out[name] = mask.clone()
        return out

    def _check_tensor(self, hook: str, who: str, layer: SparseLayer, t: Any) -> None:
        if not torch.is_tensor(t) or t.dtype != torch.bool:
            what = t.dtype if torch.is_tensor(t) else type(t).__name__
            raise HookResultError(hook, who, f"layer {layer.name!r}: expected a bool tensor, got {what}")
        if t.shape != layer.shape:
            raise HookResultError(hook, who, f"layer {layer.name!r}: shape {tuple(t.shape)} does not match the weight's "
                                             f"{tuple(layer.shape)}")
        if t.device != layer.weight.device:
            raise HookResultError(hook, who, f"layer {layer.name!r}: tensor on {t.device}, weight on {layer.weight.device}")
        if layer.block is not None and not selection.is_block_structured(t, layer.block):
            raise HookResultError(hook, who, f"layer {layer.name!r}: not made of whole {layer.block[0]}x{layer.block[1]} "
                                             "blocks (the run is block-sparse; see sparsecore.selection's block= option)")

    def _check_selection(self, hook: str, who: str, layer: SparseLayer, chosen: Any, n: int,
                         allowed: torch.Tensor, allowed_name: str) -> None:
        self._check_tensor(hook, who, layer, chosen)
        count = int(chosen.sum())
        if count != n:
            raise HookResultError(hook, who, f"layer {layer.name!r}: selected {count} entries, expected exactly {n}")
        bad = int((chosen & ~allowed).sum())
        if bad:
            raise HookResultError(hook, who, f"layer {layer.name!r}: {bad} selected entries are not {allowed_name}")

    def _check_counts(self, hook: str, who: str, counts: Any, limits: Mapping[str, int], limit_name: str) -> dict[str, int]:
        if not isinstance(counts, Mapping):
            raise HookResultError(hook, who, f"must return a mapping of layer name to int, got {type(counts).__name__}")
        missing = [n for n in self.layers if n not in counts]
        unknown = sorted(set(counts) - set(self.layers))
        if missing or unknown:
            raise HookResultError(hook, who, f"counts do not match the sparse layers: missing {missing}, unknown {unknown}")
        out = {}
        for name in self.layers:
            value = counts[name]
            integer_tensor = (torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point()
                              and value.dtype != torch.bool)
            if isinstance(value, bool) or not isinstance(value, int) and not integer_tensor:
                raise HookResultError(hook, who, f"layer {name!r}: count must be an int, got {value!r}")
            value = int(value)
            block_size = self.layers[name].block_size
            if value % block_size:
                raise HookResultError(hook, who, f"layer {name!r}: count {value} is not a multiple of the block size "
                                                 f"{block_size}")
            if value < 0 or value > limits[name]:
                raise HookResultError(hook, who, f"layer {name!r}: count {value} is outside [0, {limits[name]}] "
                                                 f"({limit_name})")
            out[name] = value
        return out

    # ------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------
    def report(self) -> DensityReport:
        """Per-layer and total density, nonzeros, and training FLOPs against dense."""
        sparse_ids = {id(l.weight) for l in self.layers.values()}
        dense_params = sum(p.numel() for p in self.model.parameters() if id(p) not in sparse_ids)
        stats = []
        for layer in self.layers.values():
            flops = None
            if layer.output_positions is not None:
                flops, who = self.manager.call_first_or_none("layer_train_flops", sparsifier=self, layer=layer)
                if flops is None:
                    flops = default_train_flops(layer, self.policy)
                elif not (isinstance(flops, tuple) and len(flops) == 2):
                    raise HookResultError("layer_train_flops", who, f"must return (forward, backward), got {flops!r}")
            stats.append(layer_stats(layer, flops))
        return DensityReport(tuple(stats), dense_params)

    @property
    def nnz(self) -> int:
        """Active weights over all sparse layers."""
        return sum(layer.nnz for layer in self.layers.values())

    # ------------------------------------------------------------------
    # checkpointing
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: masks, schedule position, plugin state, RNG.

        Contains only tensors, numbers, strings, lists and dicts, so it loads
        with ``torch.load(..., weights_only=True)``.
        """
        plugin_states = {}
        for name, plugin in self.manager.plugins():
            if callable(getattr(plugin, "state_dict", None)):
                plugin_states[name] = plugin.state_dict()
        return {
            "format": STATE_FORMAT,
            "algorithm": self.algorithm_name,
            "density": self.density,
            "step": self.step,
            "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_start_step": self._epoch_start_step,
            "total_steps": self.total_steps,
            "seed": self.seed,
            "generator": self.generator.get_state(),
            "block": list(self.block) if self.block else None,
            "masks": {name: layer.mask.clone() for name, layer in self.layers.items()},
            "versions": {name: layer.version for name, layer in self.layers.items()},
            "target_densities": {name: layer.target_density for name, layer in self.layers.items()},
            "plugins": plugin_states,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Load the model's and optimizer's state as well.

        Raises:
            CheckpointError: another algorithm, other layers or shapes.
        """
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"unsupported sparsifier state format {state.get('format')!r} (expected {STATE_FORMAT})")
        if state["algorithm"] != self.algorithm_name:
            raise CheckpointError(f"checkpoint is of algorithm {state['algorithm']!r}, this run uses {self.algorithm_name!r}")
        if float(state["density"]) != self.density:
            raise CheckpointError(f"checkpoint is of density {state['density']}, this run uses {self.density}")
        saved_block = tuple(state["block"]) if state.get("block") else None
        if saved_block != self.block:
            raise CheckpointError(f"checkpoint has block={saved_block}, this run uses block={self.block}")
        masks = state["masks"]
        if list(masks) != list(self.layers):
            raise CheckpointError(f"checkpoint layers {list(masks)} differ from this model's sparse layers {list(self.layers)}")
        for name, mask in masks.items():
            if mask.shape != self.layers[name].shape:
                raise CheckpointError(f"layer {name!r}: checkpoint mask {tuple(mask.shape)} vs weight {tuple(self.layers[name].shape)}")
            if mask.dtype != torch.bool:
                raise CheckpointError(f"layer {name!r}: checkpoint mask has dtype {mask.dtype}, expected torch.bool")
        for name, layer in self.layers.items():
            layer.mask = masks[name].to(device=layer.weight.device, dtype=torch.bool).clone()
            layer.version = max(layer.version, int(state["versions"][name])) + 1
            layer.target_density = float(state["target_densities"][name])
            if self.policy.mask_weights:
                with torch.no_grad():
                    layer.weight.mul_(layer.mask)
        self.step = int(state["step"])
        self.epoch = state["epoch"]
        self.steps_per_epoch = state["steps_per_epoch"]
        self._epoch_start_step = int(state["epoch_start_step"])
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])
        plugin_states = state.get("plugins", {})
        for name, plugin in self.manager.plugins():
            if name in plugin_states and callable(getattr(plugin, "load_state_dict", None)):
                plugin.load_state_dict(plugin_states[name])

    # ------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the engine: remove the optimizer hooks and restore replaced forwards. Masks stay applied.

        Plugins remove what they installed themselves in :func:`~sparsecore.hookspecs.on_remove`.
        Calling it again does nothing.
        """
        attached = bool(self._handles or self._original_forwards)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name, original in self._original_forwards.items():
            module = self.layers[name].module
            if original is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = original
        self._original_forwards.clear()
        for layer in self.layers.values():
            handle = layer.__dict__.pop("_size_hook", None)
            if handle is not None:
                handle.remove()
        if attached:
            self.manager.hook.on_remove(sparsifier=self)

    def __repr__(self) -> str:
        return (f"Sparsifier(algorithm={self.algorithm_name!r}, density={self.density}, layers={len(self.layers)}, "
                f"nnz={self.nnz}, step={self.step})")
