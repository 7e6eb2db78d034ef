"""Hook specifications of sparsecore.

Every plugin (an algorithm, a kernel backend, a logger) is an object whose
methods carry :data:`sparsecore.hookimpl` and have the name of one of the hooks
below. Implementations may accept fewer arguments than the spec lists; pluggy
passes only the ones they name. Arguments may be added to a spec in later
releases, never renamed or removed.

Two kinds of hook exist:

* **broadcast** hooks call every implementation, newest registered first, and
  ignore the return values;
* **first-result** hooks stop at the first implementation that returns
  something other than ``None``; that value is the answer. Within one run the
  order is: the user's extra plugins (last passed first), then the active
  algorithm, then the built-in defaults (registered ``trylast``). A plugin that
  wants to fall back to the next one returns ``None``. The engine calls
  first-result implementations one at a time (so it can name the plugin that
  answered); hook wrappers are therefore refused on first-result hooks and
  allowed on broadcast hooks.

The engine validates every first-result answer (type, shape, count, capacity)
and raises :class:`sparsecore.HookResultError` naming the hook and the plugin
at fault; nothing is silently corrected.

The five core hooks come first (:func:`on_step`, :func:`on_epoch_end`,
:func:`select_prune`, :func:`redistribute`, :func:`select_grow`); the
advanced ones after them serve algorithms that need more (a whole-model plan,
initial masks, a replaced forward, set-up checks, the dense gradient, FLOPs,
update reports). An algorithm's run-level configuration (masking policy,
engine defaults, update schedule, supported patterns) is not a hook but plain
attributes of the algorithm object: see :class:`sparsecore.Algorithm`.

Call order of one training step (see the docs page "Engine lifecycle")::

    loss.backward()
    optimizer.step()
        -> before_optimizer_step     (gradients complete and unscaled)
        -> [engine masks gradients if the policy says so]
        -> the optimizer's update
        -> [engine re-applies masks to weights]
        -> on_step
        -> [update_topology if the algorithm's schedule says so]
    sparsifier.epoch_end(epoch)
        -> on_epoch_end
        -> [update_topology if the algorithm's schedule says so]

and of one topology update (``sparsifier.update_topology(rate)``)::

    plan_update (whole model) -> select_prune (per layer, unless planned)
        -> redistribute (unless planned) -> select_grow (per layer, unless planned)
        -> [masks, weights, optimizer state updated] -> on_topology_update
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

    from sparsecore.layers import SparseLayer
    from sparsecore.reporting import TopologyReport
    from sparsecore.sparsifier import Sparsifier
    from sparsecore.topology import TopologyUpdate, UpdatePlan

PROJECT_NAME = "sparsecore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for hook specifications (used only by this module)."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: decorate plugin methods with ``@sparsecore.hookimpl``."""


# --------------------------------------------------------------------------
# Registration (process-wide manager, called once when plugins are loaded)
# --------------------------------------------------------------------------


@hookspec
def sparsecore_register_algorithms(register: Callable[..., None]) -> None:
    """Register the sparse-training algorithms a distribution offers.

    Called once per process, when the entry-point group ``sparsecore`` is
    loaded (unless ``SPARSECORE_DISABLE_PLUGIN_AUTOLOAD=1``). Registering makes
    an algorithm *available*; a run activates exactly one by name.

    Args:
        register: ``register(name, factory)``. ``name`` is the algorithm's public
            name (e.g. ``"sparse-momentum"``); ``factory(**options)`` returns a
            plugin object whose methods carry :data:`hookimpl`. Options the
            factory does not accept raise :class:`TypeError`, which the engine
            reports as an unknown option of that algorithm.

    Returns:
        Nothing. Broadcast.
    """


@hookspec
def sparsecore_register_plugins(register: Callable[..., None]) -> None:
    """Register non-algorithm plugins (kernel backends, loggers) by name.

    Called once per process like :func:`sparsecore_register_algorithms`. Such
    plugins are activated per run by name:
    ``Sparsifier(..., plugins=["sparse-kernels-cuda"])``.

    Args:
        register: ``register(name, factory)``; ``factory(**options)`` returns the
            plugin object.

    Returns:
        Nothing. Broadcast.
    """


# --------------------------------------------------------------------------
# The five core hooks
# --------------------------------------------------------------------------


@hookspec
def on_step(sparsifier: Sparsifier, step: int) -> None:
    """After every optimizer step that really happened, masks re-applied.

    Called from the optimizer's step post-hook after the engine has zeroed the
    inactive weights. A step that AMP's GradScaler skipped is not a step: this
    hook is not called and the schedule does not advance. When the
    algorithm's ``schedule`` says an update is due after this step, the engine
    runs it right after this hook.

    Args:
        sparsifier: the engine.
        step: the number of optimizer steps completed, counting this one (1 after the first).

    Returns:
        Nothing. Broadcast.
    """


@hookspec
def on_epoch_end(sparsifier: Sparsifier, epoch: int) -> None:
    """The training loop reported the end of an epoch.

    Called by :meth:`Sparsifier.epoch_end`. When the algorithm's ``schedule``
    updates per epoch (after every epoch except the last), the engine runs the
    update right after this hook. Plugins that change the run per epoch (DSD's
    phases) act here; ``sparsifier.is_final_epoch(epoch)`` tells whether it was
    the last one.

    Args:
        sparsifier: the engine.
        epoch: the epoch that just ended, as the loop numbers it (usually from 0).

    Returns:
        Nothing. Broadcast.
    """


@hookspec(firstresult=True)
def select_prune(sparsifier: Sparsifier, layer: SparseLayer, n: int, update: TopologyUpdate) -> torch.Tensor | None:
    """Choose which active weights of one layer to remove.

    Called during a topology update, once per sparse layer, in model order,
    with the count from :func:`plan_update` (not called for a layer whose
    selection the plan fixed).

    Args:
        sparsifier: the engine.
        layer: the layer; ``layer.mask`` is its mask before pruning.
        n: how many weights to remove (a multiple of ``layer.block_size``).
        update: the :class:`~sparsecore.topology.TopologyUpdate` in progress.

    Returns:
        A bool tensor shaped like the weight, ``True`` = remove, with exactly
        ``n`` entries, all currently active; or ``None``. First-result; the
        built-in default removes the ``n`` smallest ``|w|`` (ties broken by
        position).
    """


@hookspec(firstresult=True)
def redistribute(sparsifier: Sparsifier, layers: Mapping[str, SparseLayer], removed: Mapping[str, int],
                 update: TopologyUpdate) -> Mapping[str, int] | None:
    """Decide how many weights each layer regrows.

    Called during a topology update after every layer was pruned
    (``layer.mask`` is the pruned mask), unless :func:`plan_update` fixed the
    growth.

    Args:
        sparsifier: the engine.
        layers: every sparse layer by name.
        removed: how many weights each layer lost in this update.
        update: the :class:`~sparsecore.topology.TopologyUpdate` in progress.

    Returns:
        ``dict[name, int]`` for every layer, each between 0 and the layer's free
        slots (``layer.capacity - layer.nnz``); or ``None``. First-result; the
        built-in default regrows in each layer exactly what it lost.
    """


@hookspec(firstresult=True)
def select_grow(sparsifier: Sparsifier, layer: SparseLayer, n: int, update: TopologyUpdate) -> torch.Tensor | None:
    """Choose which inactive weights of one layer to activate.

    Called during a topology update, once per sparse layer, after
    :func:`redistribute` (not called for a layer whose selection the plan
    fixed). Weights pruned in this update are inactive and may be chosen again
    (they keep their value; newly activated weights start at 0).

    Args:
        sparsifier: the engine.
        layer: the layer; ``layer.mask`` is its mask after pruning.
        n: how many weights to activate (a multiple of ``layer.block_size``).
        update: the :class:`~sparsecore.topology.TopologyUpdate` in progress.

    Returns:
        A bool tensor shaped like the weight, ``True`` = activate, with exactly
        ``n`` entries, all currently inactive; or ``None``. First-result; the
        built-in default draws uniformly at random from ``sparsifier.generator``.
    """


# --------------------------------------------------------------------------
# Advanced hooks
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def plan_update(sparsifier: Sparsifier, layers: Mapping[str, SparseLayer], update: TopologyUpdate) -> UpdatePlan | None:
    """Plan a topology update for every layer at once.

    Called first in :meth:`Sparsifier.update_topology`, with the masks before
    the update. Algorithms whose choices span layers answer here: sparse
    momentum computes per-layer prune counts and regrowth from statistics of
    all layers; global magnitude pruning returns the selections themselves.
    Whatever the plan leaves as a count goes to :func:`select_prune` /
    :func:`select_grow`; a plan without ``grow`` asks :func:`redistribute`.

    Args:
        sparsifier: the engine.
        layers: every sparse layer by name, in model order.
        update: the :class:`~sparsecore.topology.TopologyUpdate` in progress
            (``update.rate`` is the prune rate of this update).

    Returns:
        An :class:`~sparsecore.UpdatePlan`, or ``None``. First-result; the
        built-in default prunes ``floor(rate * nnz)`` per layer (whole blocks
        for block layers) and leaves growth to ``redistribute``.
    """


@hookspec(firstresult=True)
def init_masks(sparsifier: Sparsifier, layers: Mapping[str, SparseLayer]) -> Mapping[str, torch.Tensor] | None:
    """Choose the initial masks, before the first optimizer step.

    Called once while the sparsifier is constructed, after per-layer target
    densities are known (``layer.target_density``). SNIP scores connections on
    a batch here; DSD starts dense.

    Args:
        sparsifier: the engine.
        layers: every sparse layer by name, in model order.

    Returns:
        ``dict[name, bool tensor]`` with one mask per layer, shaped like the
        weight (``True`` = active), or ``None``. First-result; the built-in
        default draws an exact random mask of ``round(target_density * numel)``
        entries per layer from ``sparsifier.generator``.
    """


@hookspec(firstresult=True)
def layer_forward(sparsifier: Sparsifier, layer: SparseLayer) -> Callable[..., Any] | None:
    """Replace a sparse layer's forward (and so its backward).

    Called once per sparse layer while the sparsifier is constructed. SWAT
    returns a function whose custom autograd path uses top-K weights and
    activations; kernel plugins return one that runs a sparse matmul. The
    function receives the module's forward arguments and must read the current
    ``layer.mask`` (``layer.version`` changes whenever the mask does, so
    formats can be rebuilt only then). The engine installs it as the module's
    forward and restores the original on :meth:`Sparsifier.remove`.

    Args:
        sparsifier: the engine.
        layer: the layer whose forward may be replaced.

    Returns:
        A callable ``forward(*args, **kwargs)`` or ``None`` to keep the module's
        own forward. First-result.
    """


@hookspec
def module_forwards(sparsifier: Sparsifier) -> Mapping[str, Callable[..., Any]] | None:
    """Replace the forwards of other modules of the model (not sparse layers) for the run.

    Called once while the sparsifier is constructed, after ``layer_forward``.
    SWAT replaces the forwards of BatchNorm, ReLU and max-pool modules with
    ones that save less for backward. The engine installs them when it commits
    the run, together with the layers' forwards, and restores the originals on
    :meth:`Sparsifier.remove`, so a refused set-up and a removed sparsifier
    leave the model as it was.

    Args:
        sparsifier: the engine.

    Returns:
        Qualified module name (``"features.1"``) to the callable that becomes
        its forward, or ``None``. Broadcast: every plugin's answer is used. A
        name the model does not have, a sparse layer (use ``layer_forward``), a
        module two plugins claim, or a non-callable raises
        :class:`~sparsecore.HookResultError` naming the plugin. Wrappers are
        refused on this hook (the engine calls each implementation itself).
    """


@hookspec(firstresult=True)
def layer_products(sparsifier: Sparsifier, layer: SparseLayer) -> Any | None:
    """Offer sparse products for a layer whose forward another plugin owns.

    An algorithm with its own autograd path (SWAT) asks for them through
    :func:`sparsecore.products.layer_products` from its ``layer_forward``; a
    kernel plugin answers with an object implementing
    :class:`sparsecore.products.SparseProducts` (sparse-weight products and a
    weight gradient from sparse activations), which the algorithm's forward and
    backward then call. So an algorithm's forward and a kernel backend compose
    instead of competing for ``layer_forward``.

    Args:
        sparsifier: the engine.
        layer: the layer the products are for.

    Returns:
        A :class:`~sparsecore.products.SparseProducts`, or ``None`` (no kernel
        for this layer). First-result.
    """


@hookspec
def on_setup(sparsifier: Sparsifier) -> None:
    """The run is planned: layers, target densities and initial masks are known; nothing is applied yet.

    Called once while the :class:`~sparsecore.Sparsifier` is constructed,
    after ``init_masks`` and before the engine touches the model or the
    optimizer (set-up is a transaction: if any plugin raises here, the model,
    its forwards and the optimizer stay exactly as they were). Algorithms
    validate their options against the run (e.g. a schedule that needs
    ``total_steps``, an optimizer with momentum) and initialise state that
    depends on the layers. Implementations must not change the model or the
    optimizer.

    Args:
        sparsifier: the engine.

    Returns:
        Nothing. Broadcast.
    """


@hookspec
def on_attach(sparsifier: Sparsifier) -> None:
    """The engine is attached: masks applied, forwards replaced, optimizer hooks installed.

    Called once, at the very end of :class:`~sparsecore.Sparsifier`
    construction, after every plugin accepted the run in :func:`on_setup`.
    This is the place for a plugin that must change the model at the start of
    the run (SNIP's re-initialisation of the weights, its pruned biases):
    set-up being a transaction, no earlier hook may. The engine re-applies the
    weight masks afterwards. If an implementation raises, the engine detaches
    itself (:meth:`Sparsifier.remove`) and re-raises; the initial masks stay
    applied.

    Args:
        sparsifier: the engine.

    Returns:
        Nothing. Broadcast.
    """


@hookspec
def before_optimizer_step(sparsifier: Sparsifier, step: int) -> None:
    """Gradients are complete and unscaled; the optimizer is about to update.

    Called from the optimizer's step pre-hook, before the engine masks
    gradients (when the policy masks them), so the dense gradient is visible
    here (RigL's growth criterion; ``sparsifier.is_update_step(step + 1)``
    tells whether this step ends with a topology update). Not called for a
    step AMP's GradScaler skips.

    Args:
        sparsifier: the engine.
        step: the number of optimizer steps completed so far (0 before the first).

    Returns:
        Nothing. Broadcast.
    """


@hookspec(firstresult=True)
def layer_train_flops(sparsifier: Sparsifier, layer: SparseLayer) -> tuple[int, int] | None:
    """Analytic training FLOPs of one layer per sample, for reports.

    Called by :meth:`Sparsifier.report` for every sparse layer once its output
    size is known (``layer.output_positions``). Algorithms whose cost does not
    follow from the mask alone (SWAT: the weight gradient is computed from
    sparse activations) answer here.

    Args:
        sparsifier: the engine.
        layer: the layer.

    Returns:
        ``(forward_flops, backward_flops)`` per sample (a multiply-add counts 2),
        or ``None``. First-result; the built-in rule is forward ``2·nnz·P``,
        backward ``2·nnz·P`` for the input gradient plus ``2·nnz·P`` (masked
        gradients) or ``2·numel·P`` (dense gradients) for the weight gradient,
        with ``P = layer.output_positions``.
    """


# --------------------------------------------------------------------------
# Training-harness hooks (called by `sparsecore train`, not by a hand-written loop)
# --------------------------------------------------------------------------


@hookspec
def on_run_start(sparsifier: Sparsifier, run_dir: Path, start_epoch: int) -> None:
    """A training harness starts (or resumes) a run whose outputs go to ``run_dir``.

    Called by ``sparsecore train`` (:func:`sparsecore.train.run_training`,
    :func:`~sparsecore.train.resume_training`) once its run folder is open,
    before the first training step of this invocation. Observer plugins put
    their files there (the TensorBoard logger writes ``run_dir/tensorboard``).
    A hand-written loop does not call it.

    Args:
        sparsifier: the engine.
        run_dir: the run folder.
        start_epoch: epochs already trained (0 for a fresh run, the checkpoint's epoch on resume).

    Returns:
        Nothing. Broadcast.
    """


@hookspec
def on_epoch_metrics(sparsifier: Sparsifier, epoch: int, metrics: Mapping[str, Any]) -> None:
    """A training harness recorded an epoch's metrics.

    Called by ``sparsecore train`` after each epoch is evaluated, ended
    (:func:`on_epoch_end`, any topology update) and checkpointed, with the
    record it appended to ``metrics.jsonl``: ``train_loss``, ``train_acc``,
    ``test_loss``, ``test_acc``, ``lr``, ``density``, ``layer_densities``,
    ``step``, timings and the algorithm's own metrics. A hand-written loop
    does not call it.

    Args:
        sparsifier: the engine.
        epoch: the epoch that ended, counted from 0 as in :func:`on_epoch_end`
            (the record's ``"epoch"`` counts from 1).
        metrics: the epoch's record (a copy; changing it changes nothing).

    Returns:
        Nothing. Broadcast.
    """


@hookspec
def on_topology_update(sparsifier: Sparsifier, report: TopologyReport) -> None:
    """A topology update finished; masks, weights and optimizer state are final.

    Called at the end of :meth:`Sparsifier.update_topology` and after
    :meth:`Sparsifier.set_masks`. Loggers record the report; kernel plugins may
    rebuild formats (or read ``layer.version`` lazily).

    Args:
        sparsifier: the engine.
        report: per-layer pruned, grown and active counts of this update.

    Returns:
        Nothing. Broadcast.
    """
