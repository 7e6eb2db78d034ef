"""The ``snip`` algorithm: masks chosen once by connection sensitivity, then fixed."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import sparsecore
from snip_baseline import masks as mask_ops
from snip_baseline.scoring import LossFn, connection_sensitivity, fresh_copy, normalize
from sparsecore import Algorithm, ConfigurationError

__all__ = ["SCORING_BATCHES_OPTION", "SCORING_DATA_OPTION", "Snip", "SnipAlgorithm", "SnipResult"]

#: The factory option a training harness fills with its training batches (an iterable of ``(x, y)``).
SCORING_DATA_OPTION = "loader"
#: The factory option that says how many batches of :data:`SCORING_DATA_OPTION` are scored (default 1).
SCORING_BATCHES_OPTION = "num_batches"

_HOW_TO_PASS = ("pass scoring data: batch=(x, y), or loader=<iterable of (x, y) batches> with num_batches=1 "
                "(e.g. Sparsifier(model, optimizer, algorithm='snip', density=0.05, loader=train_loader))")


@dataclass(frozen=True)
class SnipResult:
    """What SNIP did when it chose the masks (``Snip.result``).

    Attributes:
        kept: total weights kept over all sparse layers.
        total: total weights in the sparse layers.
        per_layer: layer name to weights kept.
        threshold: the smallest normalised score among the weights the top-κ
            kept (before the layer guard; for ``per_layer=True`` the smallest
            over all layers' kept scores).
        num_batches: batches the gradient was averaged over.
        score_init: ``"actual"`` or ``"fresh"``.
        guard_added: layer name to the flat index the layer guard kept.
        guard_removed: layer name to weights the guard dropped to pay for it.
    """

    kept: int
    total: int
    per_layer: dict[str, int]
    threshold: float
    num_batches: int
    score_init: str
    guard_added: dict[str, int] = field(default_factory=dict)
    guard_removed: dict[str, int] = field(default_factory=dict)


class SnipAlgorithm(Algorithm):
    """SNIP: single-shot network pruning by connection sensitivity (Lee, Ajanthan & Torr, ICLR 2019).

    Before the first optimizer step (hook ``init_masks``) every weight of the
    sparse layers is scored by its connection sensitivity ``|g ⊙ w|``, with
    ``g = ∂L/∂w`` on one mini-batch (or the mean gradient over
    ``num_batches``), normalised globally to sum to 1. The
    ``κ = round(N · density)`` highest-scored weights over all sparse layers
    together are kept, exactly, with ties broken by position (model order,
    then flat index). The mask never changes afterwards, and training is fully
    masked: pruned weights, their gradients and their optimizer state stay zero.

    Scoring runs the model in eval mode (BatchNorm uses running statistics,
    dropout is off) and restores every module's training flag afterwards; it
    takes gradients with :func:`torch.autograd.grad`, so no ``.grad`` field is
    written, and it never touches the optimizer. Only weights of the engine's
    sparse layers are scored; biases and normalisation parameters stay dense
    (snip-public also scores biases; the PyTorch ports and RigL do not).

    Example:
        ```python
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="snip", density=0.05,
                                           loader=train_loader, num_batches=1)
        ```

    Args:
        batch: one scoring batch ``(x, y)``.
        loader: an iterable of ``(x, y)`` batches (a training data loader); the
            first ``num_batches`` are scored. Without ``batch`` and ``loader``
            the sparsifier's ``data`` (``Sparsifier(..., data=train_loader)``,
            which a training harness passes) is used.
        num_batches: how many batches of ``loader`` are scored; their
            gradients are averaged. Must be 1 with ``batch``.
        loss_fn: ``loss_fn(model(x), y) -> scalar``; default cross-entropy
            (also right for models returning log-probabilities).
        per_layer: RigL's SNIP baseline: keep the top
            ``round(layer.target_density · numel)`` of ``|g ⊙ w|`` in each layer,
            with the densities of the engine's ``distribution`` (uniform, ERK).
            Global SNIP (the default) rejects a non-uniform ``distribution``,
            which it would otherwise ignore.
        score_init: ``"actual"`` scores the model's own initial weights;
            ``"fresh"`` scores a deep copy whose sparse-layer weights are
            redrawn with ``xavier_normal_`` from ``sparsifier.generator``, as the
            official code prunes one draw and trains another (see
            :func:`snip_baseline.scoring.fresh_copy`). The model is then trained
            from its own weights.
        keep_every_layer: guard against severing a layer. Global mode: every
            layer the top-κ leaves empty keeps its own top-scored weight, and as
            many of the lowest-scored kept weights of other layers are dropped
            (never a layer's last one), so κ stays exact. Per-layer mode: a
            layer whose count rounds to 0 keeps its top-scored weight (one more
            than the distribution asked). The reference code has no guard.

    Raises:
        ConfigurationError: missing or conflicting scoring data, or a bad option.
    """

    name = "snip"
    sets_initial_density = True  # global top-k: per-layer counts follow the scores, not target_density

    def __init__(self, batch: tuple[Any, torch.Tensor] | None = None, loader: Iterable[Any] | None = None,
                 num_batches: int = 1, loss_fn: LossFn | None = None, per_layer: bool = False,
                 score_init: str = "actual", keep_every_layer: bool = True) -> None:
        if batch is not None and loader is not None:
            raise ConfigurationError("snip: pass either batch=(x, y) or loader=..., not both")
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ConfigurationError(f"snip: num_batches must be a positive int, got {num_batches!r}")
        if batch is not None:
            if num_batches != 1:
                raise ConfigurationError(f"snip: batch=(x, y) is a single batch, but num_batches={num_batches}; "
                                         "pass loader=... to score several batches")
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ConfigurationError(f"snip: batch must be a pair (x, y), got {type(batch).__name__}"
                                         f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
        if loader is not None and not isinstance(loader, Iterable):
            hint = " (for a sparsecore DataSplit pass split.batches(batch_size))" if hasattr(loader, "batches") else ""
            raise ConfigurationError(f"snip: loader must be an iterable of (x, y) batches, got "
                                     f"{type(loader).__name__}{hint}")
        if loss_fn is not None and not callable(loss_fn):
            raise ConfigurationError(f"snip: loss_fn must be callable, got {type(loss_fn).__name__}")
        if score_init not in ("actual", "fresh"):
            raise ConfigurationError(f"snip: score_init must be 'actual' or 'fresh', got {score_init!r}")
        self.batch = batch
        self.loader = loader
        self.num_batches = num_batches
        self.loss_fn = loss_fn
        self.per_layer = bool(per_layer)
        self.score_init = score_init
        self.keep_every_layer = bool(keep_every_layer)
        #: The :class:`SnipResult` of the mask choice, once the sparsifier is built.
        self.result: SnipResult | None = None

    # ------------------------------------------------------------------
    def _batches(self, sparsifier: sparsecore.Sparsifier) -> list[Any]:
        if self.batch is not None:
            return [tuple(self.batch)]
        loader = self.loader if self.loader is not None else sparsifier.data
        if loader is None:
            raise ConfigurationError(f"snip needs data to score connections on; {_HOW_TO_PASS}, or "
                                     "Sparsifier(..., data=train_loader)")
        if not isinstance(loader, Iterable):
            raise ConfigurationError(f"snip: the sparsifier's data must be an iterable of (x, y) batches, got "
                                     f"{type(loader).__name__}")
        got = list(itertools.islice(iter(loader), self.num_batches))
        if len(got) < self.num_batches:
            raise ConfigurationError(f"snip: num_batches={self.num_batches}, but the loader yielded only {len(got)} "
                                     f"batch(es); {_HOW_TO_PASS}")
        for i, item in enumerate(got):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ConfigurationError(f"snip: loader item {i} is not an (x, y) pair (got {type(item).__name__})")
        return got

    def scores(self, sparsifier: sparsecore.Sparsifier,
               layers: Mapping[str, sparsecore.SparseLayer]) -> dict[str, torch.Tensor]:
        """Normalised connection sensitivities of every sparse layer's weight (summing to 1 overall).

        Args:
            sparsifier: the engine (its model and generator are used).
            layers: the sparse layers by name.

        Returns:
            Layer name to scores shaped like the weight (at least float32).

        Raises:
            ConfigurationError: the scoring data is unusable or every score is zero.
        """
        model = sparsifier.model
        if self.score_init == "fresh":
            model = fresh_copy(model, list(layers), sparsifier.generator)
        modules = dict(model.named_modules())
        weights = {}
        for name, layer in layers.items():
            module_name = name if layer.param_name == "weight" else name.rsplit(".", 1)[0]
            weights[name] = getattr(modules[module_name], layer.param_name)
        try:
            raw = connection_sensitivity(model, weights, self._batches(sparsifier), self.loss_fn)
            return normalize(raw)
        except ValueError as exc:
            raise ConfigurationError(f"snip: {exc}") from None

    @sparsecore.hookimpl
    def init_masks(self, sparsifier: sparsecore.Sparsifier,
                   layers: Mapping[str, sparsecore.SparseLayer]) -> dict[str, torch.Tensor]:
        """Score every weight once and keep the top-κ globally (or per layer); see the class docs."""
        if not self.per_layer and not (isinstance(sparsifier.distribution, str)
                                       and sparsifier.distribution == "uniform"):
            raise ConfigurationError(
                f"snip: distribution={sparsifier.distribution!r} sets per-layer densities, which global SNIP ignores "
                "(it keeps the global top-κ); pass per_layer=True to use them, or leave distribution unset")
        scores = self.scores(sparsifier, layers)
        total = sum(layer.capacity for layer in layers.values())
        if self.per_layer:
            counts = {name: round(layer.target_density * layer.capacity) for name, layer in layers.items()}
            chosen = mask_ops.per_layer_top_k(scores, counts)
            kept_scores = [scores[n][m] for n, m in chosen.items() if m.any()]
            threshold = float(torch.cat(kept_scores).min()) if kept_scores else float("nan")
            report = mask_ops.GuardReport(threshold)
            if self.keep_every_layer:
                chosen, guard = mask_ops.keep_every_layer(scores, chosen)
                report = mask_ops.GuardReport(threshold, guard.added)
        else:
            kappa = round(total * sparsifier.density)
            if kappa < 1:
                raise ConfigurationError(f"snip: density {sparsifier.density} keeps round({total} * density) = 0 "
                                         "weights; raise the density")
            try:
                chosen, report = mask_ops.global_top_k(scores, kappa, guard=self.keep_every_layer)
            except ValueError as exc:
                raise ConfigurationError(f"snip: {exc}") from None
        device_masks = {name: chosen[name].to(layers[name].weight.device) for name in layers}
        per_layer = {name: int(m.sum()) for name, m in device_masks.items()}
        self.result = SnipResult(kept=sum(per_layer.values()), total=total, per_layer=per_layer,
                                 threshold=report.threshold,
                                 num_batches=1 if self.batch is not None else self.num_batches,
                                 score_init=self.score_init, guard_added=dict(report.added),
                                 guard_removed=dict(report.removed))
        return device_masks

    def __repr__(self) -> str:
        return (f"SnipAlgorithm(per_layer={self.per_layer}, score_init={self.score_init!r}, num_batches={self.num_batches}, "
                f"keep_every_layer={self.keep_every_layer})")


#: The name under which earlier releases exported the class.
Snip = SnipAlgorithm
