"""The shape of an algorithm: what the engine reads from the active algorithm object.

An algorithm is a plugin object: its methods marked with :data:`sparsecore.hookimpl`
answer hooks, and a few plain attributes configure the run. Subclassing
:class:`Algorithm` gives every attribute its default; any object with the same
attributes works too (the engine reads them with these defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from sparsecore.policy import MaskingPolicy
from sparsecore.schedules import UpdateSchedule
from sparsecore.selection import NMPattern

if TYPE_CHECKING:  # pragma: no cover
    from sparsecore.layers import SparseLayer
    from sparsecore.sparsifier import Sparsifier

#: Keys an algorithm's :attr:`Algorithm.engine_defaults` may set.
ENGINE_DEFAULT_KEYS = ("density", "distribution", "dense_first_layer", "dense_last_layer", "include", "exclude",
                       "layer_types", "pattern")
#: Sparsity patterns an algorithm may declare in :attr:`Algorithm.patterns`: ``"unstructured"``,
#: ``"block"`` (``block=(r, c)`` runs) and ``"n:m"`` (``pattern="N:M"`` runs).
PATTERNS = ("unstructured", "block", "n:m")


class Algorithm:
    """Base class of sparse-training algorithms: the run-level configuration the engine reads.

    Attributes:
        name: the algorithm's public name (as registered).
        masking_policy: how the engine treats inactive weights, gradients and
            optimizer state (:class:`MaskingPolicy`); the default masks all three.
        engine_defaults: engine options this algorithm wants when the user gives
            none; keys from :data:`ENGINE_DEFAULT_KEYS` (e.g. DSD's
            ``{"density": 0.7}``, SWAT's ``{"dense_first_layer": True}``,
            SR-STE's ``{"pattern": "2:4"}``; a user's ``block=`` overrides a
            default ``pattern``).
        distribution_defaults: per distribution name, engine options that apply
            when that distribution is in force and the user left them unset
            (they win over ``engine_defaults``): RigL's
            ``{"uniform": {"dense_first_layer": True}}``, as its uniform runs
            keep the first layer dense. Keys: ``dense_first_layer``,
            ``dense_last_layer``, ``include``, ``exclude``, ``layer_types``.
        schedule: an :class:`~sparsecore.schedules.UpdateSchedule` the engine
            drives (topology updates after steps or epochs), or ``None`` for an
            algorithm whose topology does not change on a schedule.
        patterns: the sparsity patterns it supports, from :data:`PATTERNS`;
            a run whose pattern (unstructured, ``block=`` or ``pattern="N:M"``)
            is not listed is refused. An algorithm that lists ``"block"`` or
            ``"n:m"`` passes ``layer.pattern`` as ``block`` to every
            :mod:`sparsecore.selection` helper, so its choices follow the run's
            pattern.
        keeps_budget: ``True`` (default): this plugin's ``redistribute``
            answers regrow, over all layers, exactly as many weights as the
            update removed; the engine refuses another total with a
            :class:`~sparsecore.HookResultError`. ``False`` lets its
            ``redistribute`` regrow a different total on purpose. Only
            ``redistribute`` answers are checked: growth fixed by a
            ``plan_update`` answer (sparse momentum's drift correction) is the
            algorithm's own plan and may have any total.
        sets_initial_density: ``False`` (default): this plugin's
            ``init_masks`` answers hold exactly
            ``layer.active_count(layer.target_density)`` active weights per
            layer, or the engine refuses the run with a
            :class:`~sparsecore.HookResultError`. ``True`` for an algorithm that
            chooses its own initial counts (DSD starts dense, SNIP keeps a
            global top-k, a Bernoulli draw varies per weight).

    Example:
        ```python
        class MomentumGrowth(sparsecore.Algorithm):
            name = "momentum-growth"
            # growth reads the momentum of inactive weights, so their gradients and state stay dense
            masking_policy = sparsecore.MaskingPolicy(mask_gradients=False, mask_optimizer_state=False,
                                                      reset_grown_state=False)
            patterns = ("unstructured", "block")

            def __init__(self, prune_rate=0.3):
                self.schedule = sparsecore.UpdateSchedule(prune_rate, update_every=100, owner=self.name)

            @sparsecore.hookimpl
            def select_grow(self, sparsifier, layer, n):
                score = sparsifier.momentum(layer).abs()
                return sparsecore.selection.largest(score, ~layer.mask, n, layer.block)
        ```
    """

    name: ClassVar[str] = ""
    masking_policy: MaskingPolicy = MaskingPolicy()
    engine_defaults: Mapping[str, Any] = MappingProxyType({})
    distribution_defaults: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
    schedule: UpdateSchedule | None = None
    patterns: tuple[str, ...] = ("unstructured",)
    keeps_budget: bool = True
    sets_initial_density: bool = False

    def nm_group_count(self, sparsifier: Sparsifier, layer: SparseLayer) -> int:
        """In an N:M run, how many active weights every group of ``layer`` holds now (default: N).

        The engine holds every answer to this count: the masks of
        ``init_masks`` and ``set_masks``, and the masks after every topology
        update, where a layer's grow count must be its deficit
        ``count * groups - nnz``. An algorithm that moves its groups through
        other counts on purpose overrides it; GMP's gradual N:M pruning
        answers ``M`` (dense) before its first pruning step, then a count
        falling from ``M`` to ``N`` on its cubic schedule. The answer must be
        the same for a given step and layer (the engine may ask several times
        per update) and an int from 1 to M.

        Args:
            sparsifier: the run (``sparsifier.step`` is the step of the update being checked).
            layer: an N:M sparse layer (``layer.pattern`` is an :class:`~sparsecore.selection.NMPattern`).
        """
        pattern = layer.pattern
        if not isinstance(pattern, NMPattern):
            raise ValueError(f"layer {layer.name!r} is not N:M sparse (its pattern is {pattern!r})")
        return pattern.n

    def metrics(self, sparsifier: Sparsifier) -> dict[str, Any]:
        """Values a training harness records each epoch beside loss and accuracy (e.g. DSD's ``phase``).

        Returns:
            A mapping of short names to numbers or strings; empty by default.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the sparsifier (tensors, numbers, strings, lists, dicts only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
