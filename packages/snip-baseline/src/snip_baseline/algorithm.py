"""The ``snip`` algorithm: masks chosen once by connection sensitivity, then fixed."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import sparsecore
from snip_baseline import masks as mask_ops
from snip_baseline.init import INIT_LAYER_TYPES, variance_scaling_init_
from snip_baseline.scoring import LossFn, connection_sensitivity, fresh_copy, normalize, variance_scaling_copy
from sparsecore import Algorithm, ConfigurationError, optim_state

__all__ = ["INITS", "SCORE_BIAS_INITS", "SCORE_INITS", "SCORING_BATCHES_OPTION", "SCORING_DATA_OPTION", "Snip",
           "SnipAlgorithm", "SnipResult"]

#: The factory option a training harness fills with its training batches (an iterable of ``(x, y)``).
SCORING_DATA_OPTION = "loader"
#: The factory option that says how many batches of :data:`SCORING_DATA_OPTION` are scored (default 1).
SCORING_BATCHES_OPTION = "num_batches"

#: Values of the ``score_init`` option.
SCORE_INITS = ("actual", "fresh", "variance_scaling")
#: Values of the ``score_bias_init`` option.
SCORE_BIAS_INITS = ("zeros", "variance_scaling")
#: Values of the ``init`` option.
INITS = (None, "variance_scaling")

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
        guard_removed: layer name (or bias name) to entries the guard dropped to pay for it.
        bias_kept: biases kept (``prune_biases=True``; 0 otherwise).
        bias_total: biases that competed for the budget (``prune_biases=True``; 0 otherwise).
    """

    kept: int
    total: int
    per_layer: dict[str, int]
    threshold: float
    num_batches: int
    score_init: str
    guard_added: dict[str, int] = field(default_factory=dict)
    guard_removed: dict[str, int] = field(default_factory=dict)
    bias_kept: int = 0
    bias_total: int = 0


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
    written, and it never touches the optimizer. By default only weights of
    the engine's sparse layers are scored; biases and normalisation parameters
    stay dense, as in the PyTorch ports and RigL. ``prune_biases=True`` puts
    the biases of the sparse layers into the candidate set, as snip-public does.

    snip-public's own protocol is ``init="variance_scaling",
    score_init="variance_scaling", prune_biases=True, keep_every_layer=False``
    with plain (not Nesterov) momentum in the optimizer (the recipe
    ``snip-official`` of ``sparsecore train``).

    ``init`` and ``prune_biases`` change the model while SNIP chooses its masks
    (hook ``init_masks``), after every check of SNIP's own has passed but
    before the engine commits the set-up: if another plugin refuses the run
    afterwards, the model keeps those changes (building the run again redraws
    them the same way from the run's seed).

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
            widely used PyTorch port does (see :func:`snip_baseline.scoring.fresh_copy`);
            ``"variance_scaling"`` scores a deep copy whose linear and
            convolution weights are drawn by TF1's variance-scaling
            initializer and whose biases are zero, snip-public's scored draw
            (:func:`snip_baseline.scoring.variance_scaling_copy`). With either
            copy the model is trained from its own weights: the official code
            prunes one draw and trains another.
        score_bias_init: the biases of the ``"variance_scaling"`` copy:
            ``"zeros"`` (snip-public's ``initializer_b_bp`` default since its
            commit f028496) or ``"variance_scaling"``, drawn like the weights
            (the default of its first release, b00bef0). With
            ``prune_biases=True`` it decides the biases' fate: zero biases
            score 0 and are all pruned, drawn ones compete with the weights.
            Only ``"zeros"`` is accepted with another ``score_init``.
        init: ``None`` trains the model's own initial weights;
            ``"variance_scaling"`` first redraws every linear and convolution
            layer of the model as snip-public's trained draw: weights from
            TF1's variance-scaling initializer (variance ``1/fan_in``, truncated
            normal), biases zero (:func:`snip_baseline.init.variance_scaling_init_`),
            from ``sparsifier.generator``. ``score_init="actual"`` then scores
            this draw.
        prune_biases: put the ``bias`` of every sparse layer's module into the
            candidate set, as snip-public does: biases are scored by
            ``|b ⊙ ∂L/∂b|`` like the weights, ``κ = round((N + B) · density)``
            over the ``N`` weights and ``B`` biases together, and the weights'
            share sets the sparse layers' masks. A pruned bias is set to zero
            at set-up, its gradient is zeroed before every optimizer step, and
            its value and optimizer state are zeroed after it, so it stays 0.
            A bias that starts at zero scores 0, so at high sparsity it is
            pruned. Only with global selection (not ``per_layer``); the layer
            guard protects weights only.
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
                 score_init: str = "actual", keep_every_layer: bool = True, init: str | None = None,
                 prune_biases: bool = False, score_bias_init: str = "zeros") -> None:
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
        if not isinstance(score_init, str) or score_init not in SCORE_INITS:
            raise ConfigurationError(f"snip: score_init must be one of {', '.join(map(repr, SCORE_INITS))}, "
                                     f"got {score_init!r}")
        if not isinstance(score_bias_init, str) or score_bias_init not in SCORE_BIAS_INITS:
            raise ConfigurationError(f"snip: score_bias_init must be one of {', '.join(map(repr, SCORE_BIAS_INITS))}, "
                                     f"got {score_bias_init!r}")
        if score_bias_init != "zeros" and score_init != "variance_scaling":
            raise ConfigurationError(f"snip: score_bias_init={score_bias_init!r} draws the biases of the "
                                     f"variance-scaling copy; it needs score_init='variance_scaling', "
                                     f"got score_init={score_init!r}")
        if init is not None and (not isinstance(init, str) or init not in INITS):
            raise ConfigurationError(f"snip: init must be None or 'variance_scaling', got {init!r}")
        if not isinstance(prune_biases, bool):
            raise ConfigurationError(f"snip: prune_biases must be True or False, got {prune_biases!r}")
        if prune_biases and per_layer:
            raise ConfigurationError("snip: prune_biases=True ranks biases against the weights of all layers "
                                     "together (global SNIP); it cannot be combined with per_layer=True")
        self.batch = batch
        self.loader = loader
        self.num_batches = num_batches
        self.loss_fn = loss_fn
        self.per_layer = bool(per_layer)
        self.score_init = score_init
        self.score_bias_init = score_bias_init
        self.keep_every_layer = bool(keep_every_layer)
        self.init = init
        self.prune_biases = prune_biases
        #: The :class:`SnipResult` of the mask choice, once the sparsifier is built.
        self.result: SnipResult | None = None
        #: ``prune_biases=True``: qualified bias name (e.g. ``"fc1.bias"``) to its bool mask (``True`` = kept).
        self.bias_masks: dict[str, torch.Tensor] = {}
        self._biases: dict[str, torch.Tensor] = {}
        self._pruned_biases: dict[str, torch.Tensor] = {}

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

    def scores(self, sparsifier: sparsecore.Sparsifier, layers: Mapping[str, sparsecore.SparseLayer],
               model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Normalised connection sensitivities of every candidate (summing to 1 overall).

        Args:
            sparsifier: the engine (its model and generator are used).
            layers: the sparse layers by name.
            model: the model whose parameters are scored (copied first for
                ``score_init="fresh"``/``"variance_scaling"``); default
                ``sparsifier.model``.

        Returns:
            Layer name to the scores of its weight, then, with
            ``prune_biases=True``, qualified bias name to the scores of that
            bias; shaped like the tensor, at least float32.

        Raises:
            ConfigurationError: the scoring data is unusable or every score is zero.
        """
        model = sparsifier.model if model is None else model
        if self.score_init == "fresh":
            model = fresh_copy(model, list(layers), sparsifier.generator)
        elif self.score_init == "variance_scaling":
            model = variance_scaling_copy(model, sparsifier.generator, biases=self.score_bias_init)
        modules = dict(model.named_modules())
        tensors = {key: getattr(modules[module_name], param)
                   for key, (module_name, param) in self._candidates(sparsifier.model, layers).items()}
        try:
            raw = connection_sensitivity(model, tensors, self._batches(sparsifier), self.loss_fn)
            return normalize(raw)
        except ValueError as exc:
            raise ConfigurationError(f"snip: {exc}") from None

    def _candidates(self, model: nn.Module,
                    layers: Mapping[str, sparsecore.SparseLayer]) -> dict[str, tuple[str, str]]:
        """Candidate name to ``(module name, parameter name)``: the layers' weights, then (``prune_biases``) biases."""
        out = {name: (name if layer.param_name == "weight" else name.rsplit(".", 1)[0], layer.param_name)
               for name, layer in layers.items()}
        if self.prune_biases:
            modules = dict(model.named_modules())
            for name, layer in layers.items():
                bias = getattr(layer.module, "bias", None)
                if layer.param_name != "weight" or not isinstance(bias, nn.Parameter) or not bias.requires_grad:
                    continue
                key = f"{name}.bias" if name else "bias"
                if key in out or modules.get(name) is not layer.module:
                    raise ConfigurationError(f"snip: prune_biases cannot name the bias of layer {name!r} apart "
                                             "from the sparse layers")
                out[key] = (name, "bias")
        return out

    @sparsecore.hookimpl
    def init_masks(self, sparsifier: sparsecore.Sparsifier,
                   layers: Mapping[str, sparsecore.SparseLayer]) -> dict[str, torch.Tensor]:
        """Score every candidate once and keep the top-κ globally (or per layer); see the class docs."""
        if not self.per_layer and not (isinstance(sparsifier.distribution, str)
                                       and sparsifier.distribution == "uniform"):
            raise ConfigurationError(
                f"snip: distribution={sparsifier.distribution!r} sets per-layer densities, which global SNIP ignores "
                "(it keeps the global top-κ); pass per_layer=True to use them, or leave distribution unset")
        candidates = self._candidates(sparsifier.model, layers)
        modules = dict(sparsifier.model.named_modules())
        biases = {key: getattr(modules[module_name], param)
                  for key, (module_name, param) in candidates.items() if key not in layers}
        total = sum(layer.capacity for layer in layers.values())
        bias_total = sum(b.numel() for b in biases.values())
        kappa = round((total + bias_total) * sparsifier.density)
        if not self.per_layer:
            if kappa < 1:
                raise ConfigurationError(f"snip: density {sparsifier.density} keeps round({total + bias_total} * "
                                         "density) = 0 weights; raise the density")
            if self.keep_every_layer and kappa < len(layers):
                raise ConfigurationError(
                    f"snip: keeping one weight in each of {len(layers)} layers needs at least {len(layers)} kept "
                    f"weights, but only {kappa} are kept; raise the density or pass keep_every_layer=False")
        staged = self._staged_init(sparsifier)
        scores = self.scores(sparsifier, layers, staged)
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
            try:
                chosen, report = mask_ops.global_top_k(scores, kappa, guard=self.keep_every_layer,
                                                       guarded=list(layers))
            except ValueError as exc:
                raise ConfigurationError(f"snip: {exc}") from None
        # The model changes only once the engine has committed the run (on_attach): set-up is a transaction.
        self._staged = staged
        self._set_bias_masks(biases, {key: chosen[key] for key in biases})
        device_masks = {name: chosen[name].to(layers[name].weight.device) for name in layers}
        per_layer = {name: int(m.sum()) for name, m in device_masks.items()}
        self.result = SnipResult(kept=sum(per_layer.values()), total=total, per_layer=per_layer,
                                 threshold=report.threshold,
                                 num_batches=1 if self.batch is not None else self.num_batches,
                                 score_init=self.score_init, guard_added=dict(report.added),
                                 guard_removed=dict(report.removed),
                                 bias_kept=sum(int(m.sum()) for m in self.bias_masks.values()),
                                 bias_total=bias_total)
        return device_masks

    def _staged_init(self, sparsifier: sparsecore.Sparsifier) -> nn.Module | None:
        """``init="variance_scaling"``: a copy of the model drawn as snip-public's trained parameters, else ``None``."""
        if self.init is None:
            return None
        return variance_scaling_init_(copy.deepcopy(sparsifier.model), sparsifier.generator, biases="zeros")

    @staticmethod
    def _copy_init(staged: nn.Module, model: nn.Module) -> None:
        """Copy the redrawn linear and convolution parameters of ``staged`` into ``model``."""
        drawn = dict(staged.named_modules())
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, INIT_LAYER_TYPES):
                    module.weight.copy_(drawn[name].weight)
                    if module.bias is not None:
                        module.bias.copy_(drawn[name].bias)

    def _set_bias_masks(self, biases: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
        """Remember the bias masks (the pruned biases are zeroed in :meth:`on_attach`)."""
        self._biases = dict(biases)
        self.bias_masks = {key: masks[key].to(biases[key].device) for key in biases}
        self._pruned_biases = {key: ~mask for key, mask in self.bias_masks.items()}

    @sparsecore.hookimpl
    def on_attach(self, sparsifier: sparsecore.Sparsifier) -> None:
        """The run is committed: apply ``init="variance_scaling"`` and zero the pruned biases.

        The engine re-applies the weight masks right after this hook, so the
        redrawn weights are masked like the ones they replace.
        """
        staged, self._staged = getattr(self, "_staged", None), None
        if staged is not None:
            self._copy_init(staged, sparsifier.model)
        with torch.no_grad():
            for key, bias in self._biases.items():
                bias.masked_fill_(self._pruned_biases[key], 0)

    # -- keeping pruned biases at zero (prune_biases=True) ------------------------
    @sparsecore.hookimpl
    def before_optimizer_step(self, sparsifier: sparsecore.Sparsifier) -> None:
        """Zero the gradient of every pruned bias, so the optimizer and its state never see one."""
        for key, bias in self._biases.items():
            if bias.grad is not None:
                bias.grad.masked_fill_(self._pruned_biases[key], 0)

    @sparsecore.hookimpl
    def on_step(self, sparsifier: sparsecore.Sparsifier) -> None:
        """Zero every pruned bias and its optimizer state after the step."""
        with torch.no_grad():
            for key, bias in self._biases.items():
                pruned = self._pruned_biases[key]
                bias.masked_fill_(pruned, 0)
                optim_state.zero_state(sparsifier.optimizer, bias, pruned)

    # -- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The bias masks of ``prune_biases=True`` (empty otherwise; the weight masks are the engine's)."""
        return {"bias_masks": {key: mask.cpu().clone() for key, mask in self.bias_masks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into a run built with the same options.

        Raises:
            ValueError: the checkpoint's bias masks name other biases or shapes than this run's.
        """
        saved = dict(state.get("bias_masks", {}))
        if list(saved) != list(self._biases):
            raise ValueError(f"snip: checkpoint has bias masks for {list(saved)}, this run prunes biases "
                             f"{list(self._biases)} (prune_biases must match)")
        for key, mask in saved.items():
            if tuple(mask.shape) != tuple(self._biases[key].shape):
                raise ValueError(f"snip: checkpoint bias mask {key!r} has shape {tuple(mask.shape)}, the bias has "
                                 f"{tuple(self._biases[key].shape)}")
        self.bias_masks = {key: mask.to(device=self._biases[key].device, dtype=torch.bool).clone()
                           for key, mask in saved.items()}
        self._pruned_biases = {key: ~mask for key, mask in self.bias_masks.items()}

    def __repr__(self) -> str:
        return (f"SnipAlgorithm(per_layer={self.per_layer}, score_init={self.score_init!r}, "
                f"num_batches={self.num_batches}, keep_every_layer={self.keep_every_layer}, init={self.init!r}, "
                f"prune_biases={self.prune_biases}, score_bias_init={self.score_bias_init!r})")


#: The name under which earlier releases exported the class.
Snip = SnipAlgorithm
