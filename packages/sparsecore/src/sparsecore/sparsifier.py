"""The sparse training engine."""

from __future__ import annotations

import math
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sparsecore import compile_names, distributed, distributions, optim_state, selection
from sparsecore.algorithm import ENGINE_DEFAULT_KEYS, PATTERNS
from sparsecore.errors import CheckpointError, ConfigurationError, HookResultError
from sparsecore.forwards import ReplacedForwards, collect_module_forwards
from sparsecore.layer_selection import attention_readers, select_layers
from sparsecore.layers import SparseLayer
from sparsecore.masking import FusedMasks
from sparsecore.plugins import RunManager, instantiate, plugin_display_name, plugin_entries, registry
from sparsecore.policy import MaskingPolicy
from sparsecore.reporting import (
    DensityReport,
    FlopsLedger,
    LayerUpdate,
    RunFlops,
    TopologyReport,
    default_train_flops,
    layer_stats,
)
from sparsecore.schedules import UpdateSchedule
from sparsecore.selection import NMPattern
from sparsecore.topology import AnswerChecks, nm_group_count, run_update

STATE_FORMAT = 1
DEFAULT_DENSITY = 0.05

#: The sparsifier attached to each model and optimizer (one at a time).
_ATTACHED: weakref.WeakKeyDictionary[Any, Sparsifier] = weakref.WeakKeyDictionary()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers (or the model)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def attached_sparsifier(obj: nn.Module | torch.optim.Optimizer) -> Sparsifier | None:
    """The sparsifier currently attached to a model or optimizer, or ``None``."""
    if isinstance(obj, nn.Module):
        obj = unwrap_model(obj)
    return _ATTACHED.get(obj)


def _put_back(parameters: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` into ``parameters`` in place (see :meth:`Sparsifier.resume`)."""
    with torch.no_grad():
        for parameter, value in zip(parameters, values, strict=True):
            parameter.copy_(value)


def _ignore_output(module: nn.Module, args: Any, output: Any) -> None:
    """What a copied or unpickled :class:`_OutputSizeHook` becomes: the copy has no engine to report to."""


def _ignored_output_hook() -> Callable[..., None]:
    """:func:`_ignore_output`, as an unpickled :class:`_OutputSizeHook` is rebuilt."""
    return _ignore_output


class _OutputSizeHook:
    """The engine's one-shot forward hook that records a layer's output size.

    A deep copy or a pickle of the model taken before the first forward carries
    the hook along; there it becomes :func:`_ignore_output` instead of reporting
    the copy's calls to this engine (and removing this engine's hook).
    """

    def __init__(self, record: Callable[[Any], None]) -> None:
        self.record = record

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.record(output)

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _ignore_output

    def __reduce__(self) -> Any:
        return _ignored_output_hook, ()


def _output_positions(kind: str, output: Any, attention: nn.Module | None, seq_first: bool = False) -> int | None:
    """Output positions per sample in a forward's output, or ``None`` where it does not show them.

    Args:
        kind: the layer's kind (convolutions keep positions after the channel dimension).
        output: what the watched module's forward returned.
        attention: the ``MultiheadAttention`` whose output ``(attn_output, attn_weights)`` is
            measured (``None``: the layer's own output). ``attn_output`` is
            ``(L, N, E)``, ``(N, L, E)`` when ``batch_first``, or unbatched ``(L, E)``.
        seq_first: a Linear inside a module with ``batch_first=False`` (e.g. a
            ``TransformerEncoderLayer``): its 3-d output is ``(L, N, E)``, so the
            positions are ``L``, not ``N``.
    """
    if attention is not None:
        output = output[0] if isinstance(output, tuple) and output else None
    if not torch.is_tensor(output) or output.is_nested:
        return None
    if attention is not None:
        if output.dim() == 2:
            return output.shape[0]
        if output.dim() == 3:
            return output.shape[1] if getattr(attention, "batch_first", False) else output.shape[0]
        return None
    if output.dim() < 2:
        return None
    if kind.startswith("conv"):
        return math.prod(output.shape[2:])
    if seq_first and output.dim() == 3:
        return output.shape[0]
    return math.prod(output.shape[1:-1])


def _seq_first_modules(model: nn.Module) -> set[str]:
    """Qualified names of the modules that see sequence-first ``(L, N, E)`` activations.

    Those inside a module that declares ``batch_first=False``, and those inside
    the parent of a sequence-first ``MultiheadAttention`` (the convention of
    ``TransformerEncoderLayer``/``TransformerDecoderLayer``, which keep
    ``batch_first`` on their ``self_attn`` only).
    """
    names = [name for name, _ in model.named_modules()]
    scopes = set()
    for name, module in model.named_modules():
        if getattr(module, "batch_first", None) is False:
            scopes.add(name)
            if isinstance(module, nn.MultiheadAttention):
                scopes.add(name.rpartition(".")[0])
    inside: set[str] = set()
    for scope in scopes:
        prefix = f"{scope}." if scope else ""
        inside.update(sub for sub in names if sub.startswith(prefix) and sub != scope)
    return inside


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
        model: the model (plain, wrapped in DDP/DataParallel, or sharded with
            FSDP2's ``fully_shard``: build the optimizer and the sparsifier after
            sharding; see the FSDP2 guide).
        optimizer: the optimizer that holds the model's weights.
        algorithm: a registered algorithm name (``available_algorithms()``) or a
            plugin object implementing the hooks.
        density: fraction of weights kept over all sparse layers, in (0, 1];
            ``None``: the algorithm's default (its ``engine_defaults``), else 0.05.
        distribution: ``"uniform"``, ``"erk"``, ``"er"``, a mapping of layer name
            to density, or a callable; default ``"uniform"`` unless the
            algorithm's ``engine_defaults`` say otherwise.
        total_steps: optimizer steps in the whole run, for schedules that span
            training (``len(loader) * epochs``).
        plugins: extra plugins for this run: objects, names of registered
            non-algorithm plugins, or ``(name, {option: value})`` pairs; or a
            mapping ``{name: {option: value}}``. Options go to the plugin's
            factory (an unknown one is a :class:`ConfigurationError` naming the
            plugin and the option). They take precedence over the algorithm.
        dense_first_layer: keep the first prunable layer dense (``True``), or
            only when it is a convolution (``"conv"``, DSD's default).
        dense_last_layer: keep the last prunable layer dense.
        include: glob patterns of module names to make sparse (default: all
            prunable); a single string is one pattern.
        exclude: glob patterns of module names to keep dense (a string is one pattern).
        layer_types: module types to make sparse (default Linear, Conv1d/2d/3d
            and MultiheadAttention's projections; Embedding and ConvTranspose on
            request). A weight shared by several modules (tied weights) is one
            sparse layer, named after its first module; empty weights are
            skipped. Modules left dense are listed in :attr:`dense_layers`.
        seed: seed of :attr:`generator`; by default drawn from torch's global RNG.
        block: ``(rows, cols)`` to keep every sparse layer block-sparse: masks,
            prune/grow choices and counts come in whole blocks of the weight seen
            as a ``shape[0] x prod(shape[1:])`` matrix (for block-sparse kernels).
            Every sparse layer must divide into such blocks; keep the others
            dense with ``exclude`` or ``dense_last_layer``. The algorithm must
            list ``"block"`` in its ``patterns``.
        pattern: ``"N:M"`` (any integers ``0 < N < M``, e.g. ``"2:4"``) to keep
            exactly N active weights in every group of M consecutive weights
            along each sparse layer's input dimension (dim 1: a Linear's
            ``in``; a convolution's input channels at each output channel and
            kernel position). Every sparse layer's dim 1 must divide by M (keep
            the others dense with ``exclude``). Every layer's density is then
            N/M: ``density`` may be left out (or must equal N/M) and the
            distribution does not apply (a non-uniform one is refused; an
            algorithm's default distribution is ignored). Exclusive with
            ``block``; the algorithm must list ``"n:m"`` in its ``patterns``.
            Default: the algorithm's ``engine_defaults`` ``pattern``, if any.
        data: training batches for algorithms that look at data before
            training (SNIP scores connections on them); an iterable of
            ``(inputs, targets)`` the engine only hands on as :attr:`data`.
        algorithm_options: options passed to the algorithm's factory.
        **options: more algorithm options (merged into ``algorithm_options``).

    Attributes:
        layers: name → :class:`SparseLayer`, in model order.
        density: the overall density asked for (N/M in an N:M run).
        block: the block shape of a block-sparse run, else ``None``.
        pattern: the run's pattern as every :mod:`sparsecore.selection`
            helper takes it (for the global helpers): ``None``, the block shape,
            or an :class:`~sparsecore.selection.NMPattern`.
        step: optimizer steps completed (steps GradScaler skipped do not count).
        epoch: the last epoch reported to :meth:`epoch_end` (``None`` before).
        total_steps: the run's length in optimizer steps, if given.
        generator: ``torch.Generator`` for random choices, identical on every DDP rank.
        policy: the :class:`MaskingPolicy` in force.
        algorithm: the active algorithm's plugin object; ``algorithm_name`` its name.
        schedule: the algorithm's :class:`~sparsecore.schedules.UpdateSchedule` (or ``None``).
        history: the :class:`TopologyReport` of every recorded update.
        dense_layers: module name → why it stays dense (embeddings, recurrent
            weights, or weights whose forward cannot be replaced when the
            algorithm's sparsity lives in the forward).
        lr_factor: multiplies every param group's learning rate during each
            optimizer step (1.0 by default; DSD's re-dense phase lowers it).
            Between steps the param groups hold the user's own values.

    Raises:
        ConfigurationError: bad density, distribution, option or layer selection.
        UnknownAlgorithmError: an algorithm or plugin name nobody registered.
        NoPrunableLayersError: the model has no layer to make sparse.
        HookResultError: a plugin's answer broke its hook's contract.

    Set-up is a transaction: until every plugin has accepted the run, nothing
    about the model, its forwards or the optimizer changes, so a refused
    set-up leaves them exactly as they were. A model or optimizer holds at
    most one sparsifier at a time; :meth:`remove` the first before building
    another.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, algorithm: str | Any = "set",
                 density: float | None = None, distribution: str | Mapping[str, float] | Callable | None = None,
                 total_steps: int | None = None, plugins: Sequence[Any] | Mapping[str, Any] = (), *,
                 dense_first_layer: bool | str | None = None, dense_last_layer: bool | None = None,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                 layer_types: Sequence[type[nn.Module]] | None = None, seed: int | None = None,
                 block: Sequence[int] | None = None, pattern: str | NMPattern | None = None,
                 data: Iterable[Any] | None = None,
                 algorithm_options: Mapping[str, Any] | None = None, **options: Any) -> None:
        # -- 1. arguments (nothing is touched until step 5) ---------------------
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
        self._refuse_second_sparsifier()
        self.total_steps = total_steps
        self.data = data
        self.step = 0
        self.epoch: int | None = None
        self.steps_per_epoch: int | None = None
        self._epoch_start_step = 0
        self.history: list[TopologyReport] = []
        self._flops = FlopsLedger()  # training FLOPs of the steps taken (run_flops)
        self.lr_factor = 1.0
        self._saved_lrs: list[Any] | None = None
        self._handles: list[Any] = []
        self._size_hooks: dict[str, Any] = {}
        self._forwards = ReplacedForwards(self.model)
        self._attached = False

        # -- 2. plugins and the algorithm's configuration ---------------------
        self._build_plugins(algorithm, plugins, {**(algorithm_options or {}), **options})
        defaults = self._algorithm_defaults()
        nm = self._nm_pattern(pattern if pattern is not None or block is not None else defaults.get("pattern"),
                              block)
        if nm is not None:
            density, distribution = self._nm_density(nm, density, distribution)
        self.density = distributions.check_density(
            density if density is not None else defaults.get("density", DEFAULT_DENSITY))
        given = {"distribution": distribution, "dense_first_layer": dense_first_layer,
                 "dense_last_layer": dense_last_layer, "include": include, "exclude": exclude,
                 "layer_types": layer_types}
        cfg: dict[str, Any] = {k: (v if v is not None else defaults.get(k)) for k, v in given.items()}
        self.distribution = cfg["distribution"] or "uniform"
        for key, value in self._distribution_defaults().items():  # e.g. RigL: uniform keeps the first layer dense
            if given[key] is None:
                cfg[key] = value
        self.policy = self._algorithm_policy()
        self.schedule = self._algorithm_schedule()

        # -- 3. layers, densities, randomness, initial masks ------------------
        self.layers, self.dense_layers = select_layers(self.model, optimizer, cfg, self.density)
        if self.dense_layers:  # modules a user may expect sparse (embeddings, recurrent weights): say so once
            warnings.warn("these modules stay dense: " + "; ".join(f"{name!r}: {reason}" for name, reason
                                                                      in self.dense_layers.items()),
                          UserWarning, stacklevel=2)
        self._keep_forward_sparsity_honest()
        self._refuse_meta_weights()
        self.block = self._set_blocks(block)
        self.pattern = self._set_pattern(nm)
        shapes = {name: tuple(layer.shape) for name, layer in self.layers.items()}
        for name, d in distributions.resolve(self.distribution, shapes, self.density).items():
            self.layers[name].target_density = d
        self._seed_generator(seed)
        with distributed.full_masks(self.layers):  # plugins see whole masks, also of FSDP2-sharded weights
            masks, who = self.manager.call_first("init_masks", sparsifier=self, layers=self.layers)
            initial = AnswerChecks(self.layers, dict(self.manager.plugins()),
                                   self._nm_group_count).initial_masks(who, masks)
        self._warn_empty(initial, who)
        forwards = self._collect_forwards()
        module_forwards = collect_module_forwards(self)

        # -- 4. every plugin accepts the run ------------------------------------
        for name, mask in initial.items():  # plugins see the planned masks; weights are not touched yet
            self.layers[name].mask = mask
        self.manager.hook.on_setup(sparsifier=self)
        if self.schedule is not None:
            self.schedule.bind(total_steps)

        # -- 5. commit: from here on the model and optimizer change ------------
        self._masks = FusedMasks(list(self.layers.values()))
        self._has_before_step = bool(self.manager.hook.before_optimizer_step.get_hookimpls())
        self._has_on_step = bool(self.manager.hook.on_step.get_hookimpls())
        self._forwards.install([*((self.layers[name].module, forward) for name, forward in forwards.items()),
                                *module_forwards])
        self._record_output_sizes()
        self._handles.append(optimizer.register_step_pre_hook(self._before_step))
        self._handles.append(optimizer.register_step_post_hook(self._after_step))
        for module in dict.fromkeys((model, self.model)):  # checkpoints of compiled and plain models load alike
            self._handles.append(module.register_load_state_dict_pre_hook(compile_names.load_pre_hook))
        _ATTACHED[self.model] = self
        _ATTACHED[optimizer] = self
        self._attached = True
        self._commit_masks(initial, reason="init", rate=None, notify=False)

        # -- 6. plugins that change the model at the start of the run do it now ---
        try:
            self.manager.hook.on_attach(sparsifier=self)
        except BaseException:
            self.remove()  # the masks stay applied; the engine leaves nothing installed
            raise
        if self.policy.mask_weights:
            self._masks.apply_to_weights()

    @classmethod
    def resume(cls, model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any],
               *args: Any, **kwargs: Any) -> Sparsifier:
        """Build a sparsifier on a model and optimizer that already hold a resumed run's values, and load ``state``.

        For training stacks that restore the weights and the optimizer state
        before the sparsifier can be built (Lightning, the Hugging Face
        ``Trainer``). Set-up runs as it did at the start of the run: the
        optimizer's state is set aside meanwhile and every parameter is copied
        and put back afterwards, so nothing set-up does (initial masks applied
        to the weights, plugins that re-initialise weights at attach time, such
        as SNIP) touches the resumed values. Then :meth:`load_state_dict` gives
        the engine the run's masks, schedule position, plugin state and RNG.
        If set-up or loading fails, the sparsifier is removed and the
        parameters and optimizer state are exactly as they were.

        Args:
            model: the model, with the resumed weights.
            optimizer: its optimizer, with or without the resumed state.
            state: a :meth:`state_dict` of the run being resumed.
            *args: the other :class:`Sparsifier` arguments, as the run gave them.
            **kwargs: the other :class:`Sparsifier` arguments, as the run gave them.

        Raises:
            CheckpointError: ``state`` does not fit the run these arguments describe.
        """
        parameters = list(unwrap_model(model).parameters())
        kept = [p.detach().clone() if distributed.is_dtensor(p) else p.detach().to("cpu", copy=True)
                for p in parameters]
        optimizer_state = optimizer.state
        optimizer.state = defaultdict(dict)
        try:
            sparsifier = cls(model, optimizer, *args, **kwargs)
        finally:  # built or refused, the resumed values come back
            optimizer.state = optimizer_state
            _put_back(parameters, kept)
        try:
            sparsifier.load_state_dict(state)
        except BaseException:
            sparsifier.remove()
            _put_back(parameters, kept)
            raise
        return sparsifier

    # ------------------------------------------------------------------
    # set-up helpers (none of them changes the model or the optimizer)
    # ------------------------------------------------------------------
    def _refuse_second_sparsifier(self) -> None:
        for obj, what in ((self.model, "model"), (self.optimizer, "optimizer")):
            other = _ATTACHED.get(obj)
            if other is not None:
                raise ConfigurationError(
                    f"this {what} already has a sparsifier attached ({other!r}); call its remove() before "
                    "building another one (two sparsifiers would both mask the weights and report wrong densities)")

    def _refuse_meta_weights(self) -> None:
        meta = [name for name, layer in self.layers.items() if layer.weight.is_meta]
        if meta:
            raise ConfigurationError(
                f"layer(s) {meta} have weights on the meta device (no data yet); materialise the model first "
                "(e.g. model.to_empty(device='cpu') and initialise it) and build the optimizer and Sparsifier after")

    def _build_plugins(self, algorithm: str | Any, plugins: Sequence[Any] | Mapping[str, Any],
                       options: Mapping[str, Any]) -> None:
        if isinstance(algorithm, str):
            reg = registry.algorithm(algorithm)
            self.algorithm_name = reg.name
            self.algorithm = instantiate(reg, options)
        else:
            if options:
                raise ConfigurationError("algorithm options can only be given with an algorithm name; "
                                         f"configure the plugin object directly instead of passing {sorted(options)}")
            if isinstance(algorithm, type):
                raise ConfigurationError(f"algorithm {algorithm.__name__} was passed as a class; pass an instance: "
                                         f"{algorithm.__name__}()")
            self.algorithm_name = plugin_display_name(algorithm)
            self.algorithm = algorithm
        extra = [self._resolve_plugin(p, plugin_options) for p, plugin_options in plugin_entries(plugins)]
        self.manager = RunManager(self.algorithm, self.algorithm_name, extra)
        self.plugins = [p for _, p in extra]

    def _resolve_plugin(self, plugin: Any, options: Mapping[str, Any]) -> tuple[str, Any]:
        if isinstance(plugin, str):
            reg = registry.plugin(plugin)
            return reg.name, instantiate(reg, options)
        if isinstance(plugin, type):
            raise ConfigurationError(
                f"plugin {plugin.__name__} was passed as a class; pass an instance: {plugin.__name__}()")
        registry.load()
        for name, reg in registry.algorithms.items():
            if isinstance(reg.factory, type) and type(plugin) is reg.factory:
                raise ConfigurationError(
                    f"plugins=[...] holds an instance of algorithm {name!r} while the run's algorithm is "
                    f"{self.algorithm_name!r}; a run activates exactly one algorithm: pass it as algorithm= instead")
        return plugin_display_name(plugin), plugin

    def _algorithm_defaults(self) -> Mapping[str, Any]:
        defaults = getattr(self.algorithm, "engine_defaults", None) or {}
        if callable(defaults):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: engine_defaults must be a mapping "
                                     "attribute (e.g. {'density': 0.7}), not a method")
        if not isinstance(defaults, Mapping):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: engine_defaults must be a mapping, "
                                     f"got {type(defaults).__name__}")
        unknown = sorted(set(defaults) - set(ENGINE_DEFAULT_KEYS), key=str)
        if unknown:
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: engine_defaults sets unknown option(s) "
                                     f"{unknown}; known: {list(ENGINE_DEFAULT_KEYS)}")
        return defaults

    def _distribution_defaults(self) -> Mapping[str, Any]:
        """The algorithm's ``distribution_defaults`` for this run's distribution (by name), checked."""
        table = getattr(self.algorithm, "distribution_defaults", None) or {}
        if not isinstance(table, Mapping) or not all(isinstance(v, Mapping) for v in table.values()):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: distribution_defaults must map a "
                                     "distribution name to a mapping of engine options")
        chosen = table.get(self.distribution, {}) if isinstance(self.distribution, str) else {}
        allowed = ("dense_first_layer", "dense_last_layer", "include", "exclude", "layer_types")
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: distribution_defaults sets {unknown}; "
                                     f"allowed: {list(allowed)}")
        return chosen

    def _algorithm_policy(self) -> MaskingPolicy:
        policy = getattr(self.algorithm, "masking_policy", None)
        if policy is None:
            return MaskingPolicy()
        if not isinstance(policy, MaskingPolicy):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: masking_policy must be a "
                                     f"sparsecore.MaskingPolicy, got {type(policy).__name__}")
        return policy

    def _algorithm_schedule(self) -> UpdateSchedule | None:
        schedule = getattr(self.algorithm, "schedule", None)
        if schedule is not None and not isinstance(schedule, UpdateSchedule):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: schedule must be a "
                                     f"sparsecore.UpdateSchedule or None, got {type(schedule).__name__}")
        return schedule

    def _algorithm_patterns(self) -> tuple[str, ...]:
        found = getattr(self.algorithm, "patterns", ("unstructured",))
        if isinstance(found, str) or not all(p in PATTERNS for p in found):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: patterns must be a tuple of {PATTERNS}, "
                                     f"got {found!r}")
        return tuple(found)

    def _keep_forward_sparsity_honest(self) -> None:
        """Under a policy that keeps dense weights, sparsity exists only in replaced forwards: a weight the model
        reads without calling its module's forward would be dense while reported sparse, so it stays dense."""
        if self.policy.mask_weights:
            return
        bypassed = {name: layer.forward_bypass_reason for name, layer in self.layers.items()
                    if layer.forward_bypass_reason is not None}
        if not bypassed:
            return
        for name, reason in bypassed.items():
            del self.layers[name]
            self.dense_layers[name] = f"{self.algorithm_name} makes layers sparse in their forward: {reason}"
        if not self.layers:
            raise ConfigurationError(f"no layer left for {self.algorithm_name}: {list(bypassed)} are read by "
                                     "MultiheadAttention directly, so their forward cannot be replaced")
        for i, layer in enumerate(self.layers.values()):
            layer.index = i
        warnings.warn(f"{self.algorithm_name}: layer(s) {list(bypassed)} stay dense: the model reads these weights "
                      "without calling the layer's forward (MultiheadAttention), where this algorithm makes its "
                      "sparsity", UserWarning, stacklevel=3)

    def _set_blocks(self, block: Sequence[int] | None) -> tuple[int, int] | None:
        if block is None:
            return None
        if isinstance(block, (str, bytes)) or len(block) != 2 or not all(
                isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block):
            raise ConfigurationError(f"block must be two positive ints (rows, cols), got {block!r}")
        if "block" not in self._algorithm_patterns():
            raise ConfigurationError(f"algorithm {self.algorithm_name!r} does not support block-sparse runs (its "
                                     f"patterns are {self._algorithm_patterns()}); drop block=")
        shape = (int(block[0]), int(block[1]))
        for layer in self.layers.values():
            try:
                selection.block_view_shape(layer.shape, shape)
            except ValueError as exc:
                raise ConfigurationError(f"layer {layer.name!r}: {exc}; keep it dense with exclude=[{layer.name!r}] "
                                         "(or dense_first_layer/dense_last_layer)") from None
            layer.block = shape
        return shape

    def _nm_pattern(self, pattern: Any, block: Sequence[int] | None) -> NMPattern | None:
        """The run's N:M pattern from ``pattern=`` (or the algorithm's default), checked; nothing is set yet."""
        if pattern is None:
            return None
        if block is not None:
            raise ConfigurationError(f"block={block!r} and pattern={pattern!r} exclude each other; pass one of them")
        try:
            return NMPattern.parse(pattern)
        except ValueError as exc:
            raise ConfigurationError(f"pattern: {exc}") from None

    @staticmethod
    def _nm_density(nm: NMPattern, density: float | None, distribution: Any) -> tuple[float, str]:
        """An N:M run's density (N/M) and distribution (uniform); refuses any other the user asked for."""
        if density is not None and not math.isclose(float(density), nm.density, rel_tol=1e-9):
            raise ConfigurationError(f"pattern={str(nm)!r} keeps exactly {nm.n} of every {nm.m} weights, so the "
                                     f"density is {nm.density:g}; got density={density!r} (leave it out)")
        if distribution is not None and distribution != "uniform":
            raise ConfigurationError(f"pattern={str(nm)!r} gives every sparse layer density {nm.density:g}; a "
                                     f"per-layer distribution ({distribution!r}) cannot apply: leave it out")
        return nm.density, "uniform"

    def _set_pattern(self, nm: NMPattern | None) -> tuple[int, int] | NMPattern | None:
        """Check the algorithm supports the run's pattern and give every layer its ``pattern``."""
        kind = "n:m" if nm is not None else "block" if self.block is not None else "unstructured"
        if kind == "unstructured" and kind not in self._algorithm_patterns():
            raise ConfigurationError(f"algorithm {self.algorithm_name!r} does not support unstructured runs (its "
                                     f"patterns are {self._algorithm_patterns()}); pass pattern='N:M' or block=")
        if nm is None:
            for layer in self.layers.values():
                layer.pattern = self.block
            return self.block
        if "n:m" not in self._algorithm_patterns():
            raise ConfigurationError(f"algorithm {self.algorithm_name!r} does not support N:M runs such as "
                                     f"pattern={str(nm)!r} (its patterns are {self._algorithm_patterns()}); "
                                     "drop pattern=")
        for layer in self.layers.values():
            if layer.kind.startswith("conv_transpose") or layer.kind == "embedding":
                raise ConfigurationError(f"layer {layer.name!r} ({layer.kind}): its weight does not keep the input "
                                         f"dimension in dim 1, where {nm} groups run; keep it dense with "
                                         f"exclude=[{layer.name!r}]")
            try:
                nm.check_shape(layer.shape)
            except ValueError as exc:
                raise ConfigurationError(f"layer {layer.name!r}: {exc}; keep it dense with exclude=[{layer.name!r}] "
                                         "(or dense_first_layer/dense_last_layer)") from None
            layer.pattern = nm
        return nm

    def _nm_group_count(self, layer: SparseLayer) -> int:
        """Active weights every group of the N:M ``layer`` must hold now (``topology.nm_group_count``)."""
        return nm_group_count(self, layer)

    def _seed_generator(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if distributed.is_distributed():
            seed = distributed.broadcast_int(seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _warn_empty(self, masks: Mapping[str, torch.Tensor], who: str) -> None:
        empty = [name for name, mask in masks.items() if not bool(mask.any())]
        if empty:
            warnings.warn(f"sparse layer(s) {empty} start with no active weight (init_masks of {who!r} at density "
                          f"{self.density}): they pass no signal; raise the density or keep them dense with "
                          "exclude=[...]", UserWarning, stacklevel=3)

    def _collect_forwards(self) -> dict[str, Callable[..., Any]]:
        forwards = {}
        for name, layer in self.layers.items():
            if not layer.forward_replaceable:
                continue
            forward, who = self.manager.call_first_or_none("layer_forward", sparsifier=self, layer=layer)
            if forward is None:
                continue
            if not callable(forward):
                raise HookResultError("layer_forward", who, f"returned a non-callable for layer {name!r}")
            forwards[name] = forward
        return forwards

    def _record_output_sizes(self) -> None:
        """One-shot forward hooks that set each layer's ``output_positions`` from its first plain-tensor output.

        A ``MultiheadAttention``'s input projections and its ``out_proj`` are
        measured on the attention's output (sequence length), since nothing
        calls ``out_proj``.
        """
        readers = attention_readers(self.model)
        seq_first = _seq_first_modules(self.model)

        def make(layer: SparseLayer, attention: nn.Module | None) -> Callable[..., None]:
            def record(output: Any) -> None:
                positions = _output_positions(layer.kind, output, attention, layer.name in seq_first)
                if positions is None:  # a nested tensor (padded eval batch): a later forward records it
                    return
                layer.output_positions = positions
                handle = self._size_hooks.pop(layer.name, None)
                if handle is not None:
                    handle.remove()
            return _OutputSizeHook(record)

        for layer in self.layers.values():
            reader = readers.get(id(layer.module))
            attention = layer.module if layer.kind == "attention" else None if reader is None else reader[1]
            watched = layer.module if attention is None else attention
            self._size_hooks[layer.name] = watched.register_forward_hook(make(layer, attention))

    # ------------------------------------------------------------------
    # optimizer hooks (the per-step hot path)
    # ------------------------------------------------------------------
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        self._restore_lrs()  # a previous step that raised never reached the post-hook
        if self._step_was_skipped(optimizer, kwargs):
            return None
        # torch passes the step's positional arguments with the optimizer first: (optimizer, closure?)
        position = 1 if args and args[0] is optimizer else 0
        closure = kwargs.get("closure") if kwargs else None
        from_args = closure is None and len(args) > position and callable(args[position])
        if from_args:
            closure = args[position]
        replaced = None
        if closure is not None:
            # optimizer.step(closure): the gradients exist only once the step calls the closure, so the
            # gradient work runs after every closure evaluation instead of here (LBFGS evaluates it often)
            def closure_then_gradient_work() -> Any:
                loss = closure()
                self._gradient_work()
                return loss

            replaced = (((*args[:position], closure_then_gradient_work, *args[position + 1:]), kwargs) if from_args
                        else (args, {**kwargs, "closure": closure_then_gradient_work}))
        else:
            self._gradient_work()
        if self.lr_factor != 1.0:
            self._saved_lrs = [group["lr"] for group in optimizer.param_groups]
            for group, lr in zip(optimizer.param_groups, self._saved_lrs, strict=True):
                group["lr"] = lr * self.lr_factor
        return replaced

    def _gradient_work(self) -> None:
        """Before the optimizer uses the step's gradients: ``before_optimizer_step``, then gradient masking."""
        if self._has_before_step:
            self.manager.hook.before_optimizer_step(sparsifier=self, step=self.step)
        if self.policy.mask_gradients:
            self._masks.apply_to_gradients()

    def _restore_lrs(self) -> None:
        if self._saved_lrs is not None:
            # strict=False: a group added since the rates were scaled was never scaled
            for group, lr in zip(self.optimizer.param_groups, self._saved_lrs, strict=False):
                group["lr"] = lr  # the original objects: schedulers and checkpoints never see a scaled rate
            self._saved_lrs = None

    @staticmethod
    def _step_was_skipped(optimizer: torch.optim.Optimizer, kwargs: Any) -> bool:
        # GradScaler steps optimizers that support AMP scaling (fused ones) even on inf/nan and
        # hands them ``found_inf`` (an attribute during the step, or the scaler as a kwarg).
        found_inf = getattr(optimizer, "found_inf", None)
        if torch.is_tensor(found_inf):
            return bool(found_inf.item())
        scaler = kwargs.get("grad_scaler") if kwargs else None
        if scaler is not None:
            return any(bool(v.item()) for v in scaler._check_inf_per_device(optimizer).values())
        return False

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._restore_lrs()
        if self._step_was_skipped(optimizer, kwargs):
            return
        if self.policy.mask_weights:
            self._masks.apply_to_weights()
        self.step += 1
        if self._has_on_step:
            self.manager.hook.on_step(sparsifier=self, step=self.step)
        if self.schedule is not None and self.schedule.due_after_step(self.step):
            self.update_topology(self.schedule.rate(self.step))

    # ------------------------------------------------------------------
    # training loop API
    # ------------------------------------------------------------------
    def epoch_end(self, epoch: int) -> None:
        """Tell the engine an epoch ended: calls ``on_epoch_end``, then runs a scheduled update.

        Args:
            epoch: the epoch that ended, as the loop numbers it.
        """
        if self.steps_per_epoch is None and self.step > self._epoch_start_step:
            self.steps_per_epoch = self.step - self._epoch_start_step
        self._epoch_start_step = self.step
        self.epoch = epoch
        self.manager.hook.on_epoch_end(sparsifier=self, epoch=epoch)
        if self.schedule is not None and self.schedule.due_after_epoch(self.is_final_epoch(epoch)):
            self.update_topology(self.schedule.rate(self.step))

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

    def is_update_step(self, step: int) -> bool:
        """Whether the schedule runs a topology update right after optimizer step ``step`` (1 after the first).

        Read it in ``before_optimizer_step`` as ``is_update_step(step + 1)`` to
        keep the dense gradient of the step that ends with an update (RigL).
        """
        return self.schedule is not None and self.schedule.due_after_step(step)

    @property
    def progress(self) -> float:
        """Fraction of ``total_steps`` done (0 without ``total_steps``)."""
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def momentum(self, layer: SparseLayer | str) -> torch.Tensor | None:
        """Momentum of a layer's weight: SGD's buffer or Adam's normalised first moment.

        For an FSDP2-sharded weight it is the whole tensor, gathered from the
        shards (a collective: call it on every rank).
        """
        layer = self.layers[layer] if isinstance(layer, str) else layer
        found = optim_state.momentum(self.optimizer, layer.weight)
        return None if found is None else distributed.full_tensor(found)

    def optimizer_state(self, layer: SparseLayer | str) -> dict[str, torch.Tensor]:
        """The optimizer's per-element state tensors of a layer's weight."""
        layer = self.layers[layer] if isinstance(layer, str) else layer
        return optim_state.weight_state(self.optimizer, layer.weight)

    def reset_optimizer_state(self) -> None:
        """Discard the optimizer's state of every parameter, so the next step is a fresh optimizer's first.

        DSD calls it at each phase change (the paper restarts the solver).
        """
        optim_state.clear_state(self.optimizer)

    def algorithm_metrics(self) -> dict[str, Any]:
        """The algorithm's own per-epoch values for a training harness (``Algorithm.metrics``), e.g. DSD's phase.

        Raises:
            ConfigurationError: the algorithm returned something other than a mapping.
        """
        metrics = getattr(self.algorithm, "metrics", None)
        if not callable(metrics):
            return {}
        values = metrics(self)
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"algorithm {self.algorithm_name!r}: metrics() must return a mapping, "
                                     f"got {type(values).__name__}")
        return dict(values)

    # ------------------------------------------------------------------
    # topology
    # ------------------------------------------------------------------
    def update_topology(self, rate: float) -> TopologyReport:
        """Run one plan → prune → redistribute → grow cycle over every sparse layer.

        The engine calls it when the algorithm's schedule says so; call it
        directly for updates of your own.

        Args:
            rate: the prune rate of this update (a fraction of active weights), in [0, 1].

        Returns:
            The :class:`TopologyReport` of the update (also in :attr:`history`).

        Raises:
            HookResultError: a plugin returned a wrong type, shape, or count,
                pruned an inactive weight, grew an active one, or exceeded a
                layer's capacity. The previous masks stay in force.
        """
        rate = float(rate)
        if not (0.0 <= rate <= 1.0):
            raise ConfigurationError(f"prune rate must be in [0, 1], got {rate}")
        with distributed.full_masks(self.layers):  # the cycle runs on whole masks, also of sharded weights
            masks = run_update(self, rate)
        return self._commit_masks(masks, reason="update", rate=rate)

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
        full.update(AnswerChecks(self.layers, group_count=self._nm_group_count).masks("set_masks", "<caller>", masks,
                                                                                    partial=True))
        return self._commit_masks(full, reason="set_masks", rate=None, notify=record)

    def _commit_masks(self, masks: Mapping[str, torch.Tensor], reason: str, rate: float | None,
                      notify: bool = True) -> TopologyReport:
        if notify:  # the steps since the last recorded change trained with the masks in force until now
            self._flops.close(self.step, self._per_step_flops)
        if distributed.is_distributed():
            distributed.broadcast_masks(masks[name] for name, layer in self.layers.items()
                                        if not distributed.is_dtensor(layer.weight))  # shard_like syncs the rest
        updates: dict[str, LayerUpdate] = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                # sharded weights: rank 0's whole mask, scattered like the weight (plain ones stay as they are)
                new, old = (distributed.shard_like(m, layer.weight) for m in (masks[name], layer.mask))
                grown, pruned = new & ~old, old & ~new
                n_grown, n_pruned = distributed.count_nonzero(grown), distributed.count_nonzero(pruned)
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
                nnz = distributed.count_nonzero(new)
                updates[name] = LayerUpdate(n_pruned, n_grown, nnz, nnz / new.numel())
        self._masks.invalidate()
        report = TopologyReport(self.step, self.epoch, rate, updates, reason)
        if notify:
            self.history.append(report)
            self.manager.hook.on_topology_update(sparsifier=self, report=report)
        return report

    # ------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------
    def report(self) -> DensityReport:
        """Per-layer and total density, nonzeros, training FLOPs against dense, and the layers left dense."""
        sparse_ids = {id(layer.weight) for layer in self.layers.values()}
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
        return DensityReport(tuple(stats), dense_params, dict(self.dense_layers))

    def run_flops(self) -> RunFlops | None:
        """Training FLOPs per sample of the optimizer steps taken so far, against the same steps dense.

        Every step is charged the per-sample cost :meth:`report` gives for the
        masks in force during it (it changes only at recorded mask changes:
        topology updates and :meth:`set_masks`), so a run whose density moves
        (gradual pruning, DSD) is charged what it trained with. Kept in
        :meth:`state_dict`, so a resumed run counts its whole history.

        Returns:
            The :class:`~sparsecore.reporting.RunFlops` so far, or ``None`` when
            some step's cost is unknown: a sparse layer that never ran forward
            (its output size decides its FLOPs), or a run resumed from a state
            saved without the count.
        """
        return self._flops.total(self.step, self._per_step_flops)

    def _per_step_flops(self) -> tuple[int, int] | None:
        report = self.report()
        sparse, dense = report.train_flops, report.dense_train_flops
        return None if sparse is None or dense is None else (sparse, dense)

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
        with ``torch.load(..., weights_only=True)``. Masks of FSDP2-sharded
        weights are ``DTensor``s sharded like their weights: save the state
        with ``torch.distributed.checkpoint`` beside the model's and the
        optimizer's, and :meth:`load_state_dict` what ``dcp.load`` filled in.
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
            "schedule": None if self.schedule is None else self.schedule.config(),
            "seed": self.seed,
            "generator": self.generator.get_state(),
            "block": list(self.block) if self.block else None,
            "pattern": str(self.pattern) if isinstance(self.pattern, NMPattern) else None,
            "masks": {name: layer.mask.clone() for name, layer in self.layers.items()},
            "versions": {name: layer.version for name, layer in self.layers.items()},
            "target_densities": {name: layer.target_density for name, layer in self.layers.items()},
            "plugins": plugin_states,
            "run_flops": self._flops.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Load the model's and optimizer's state as well.

        Everything is checked before anything changes. Layer names that differ
        only by ``torch.compile``'s ``_orig_mod`` segments (a sub-module compiled
        in one run and not in the other) name the same layers; while the engine
        is attached, the model's own ``load_state_dict`` likewise accepts keys
        saved from a compiled model (``_orig_mod.fc1.weight``) and the other way round.

        Raises:
            CheckpointError: another algorithm, density, schedule, block size, N:M pattern, other layers or shapes.
        """
        renamed = compile_names.match_layer_names(state["masks"], self.layers) if isinstance(state, Mapping) \
            and isinstance(state.get("masks"), Mapping) else None
        if renamed is not None:
            state = {**state, **{key: {renamed[name]: value for name, value in state[key].items()}
                                 for key in ("masks", "versions", "target_densities")}}
        self._check_state(state)
        for name, layer in self.layers.items():
            mask = state["masks"][name]
            if not distributed.is_dtensor(mask):
                mask = mask.to(device=layer.weight.device, dtype=torch.bool)
            layer.mask = distributed.shard_like(mask, layer.weight).clone()  # sharded like an FSDP2 weight
            layer.version = max(layer.version, int(state["versions"][name])) + 1
            layer.target_density = float(state["target_densities"][name])
            if self.policy.mask_weights:
                with torch.no_grad():
                    layer.weight.mul_(layer.mask)
        self._masks.invalidate()
        self.step = int(state["step"])
        self.epoch = state["epoch"]
        self.steps_per_epoch = state["steps_per_epoch"]
        self._epoch_start_step = int(state["epoch_start_step"])
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])
        self._flops.load_state_dict(state.get("run_flops"), self.step)
        plugin_states = state.get("plugins", {})
        for name, plugin in self.manager.plugins():
            if name in plugin_states and callable(getattr(plugin, "load_state_dict", None)):
                plugin.load_state_dict(plugin_states[name])

    def _check_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"unsupported sparsifier state format {found!r} (expected {STATE_FORMAT})")
        if state["algorithm"] != self.algorithm_name:
            raise CheckpointError(
                f"checkpoint is of algorithm {state['algorithm']!r}, this run uses {self.algorithm_name!r}")
        if float(state["density"]) != self.density:
            raise CheckpointError(f"checkpoint is of density {state['density']}, this run uses {self.density}")
        saved_block = tuple(state["block"]) if state.get("block") else None
        if saved_block != self.block:
            raise CheckpointError(f"checkpoint has block={saved_block}, this run uses block={self.block}")
        mine_nm = str(self.pattern) if isinstance(self.pattern, NMPattern) else None
        if state.get("pattern") != mine_nm:
            raise CheckpointError(f"checkpoint has pattern={state.get('pattern')!r}, this run uses pattern={mine_nm!r}")
        masks = state["masks"]
        if list(masks) != list(self.layers):
            raise CheckpointError(
                f"checkpoint layers {list(masks)} differ from this model's sparse layers {list(self.layers)}")
        for name, mask in masks.items():
            if mask.shape != self.layers[name].shape:
                raise CheckpointError(
                    f"layer {name!r}: checkpoint mask {tuple(mask.shape)} vs weight {tuple(self.layers[name].shape)}")
            if mask.dtype != torch.bool:
                raise CheckpointError(f"layer {name!r}: checkpoint mask has dtype {mask.dtype}, expected torch.bool")
        mine = None if self.schedule is None else self.schedule.config()
        if "schedule" in state and state["schedule"] != mine:
            raise CheckpointError(f"checkpoint has schedule {state['schedule']}, this run uses {mine}")

    # ------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the engine: remove the optimizer hooks, restore replaced forwards and lift their fast-path guard.

        Weights stay as they are. Where the policy masks the weights
        (``policy.mask_weights``, most algorithms) the inactive ones are zero,
        so the plain model computes what the sparse one did. Algorithms whose
        sparsity lives in the forward (SR-STE, SWAT) keep dense weights: after
        ``remove()`` the model computes with all of them. Use
        :func:`sparsecore.export.squash` (or SWAT's ``hard_prune``) first to keep
        the sparse model.

        Afterwards the model and optimizer may get a new sparsifier. Calling it
        again does nothing.
        """
        self._restore_lrs()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._forwards.restore()
        for handle in self._size_hooks.values():
            handle.remove()
        self._size_hooks.clear()
        if self._attached:
            for obj in (self.model, self.optimizer):
                if _ATTACHED.get(obj) is self:
                    del _ATTACHED[obj]
            self._attached = False

    def __repr__(self) -> str:
        return (f"Sparsifier(algorithm={self.algorithm_name!r}, density={self.density}, layers={len(self.layers)}, "
                f"nnz={self.nnz}, step={self.step})")
