"""The topology driver of truly sparse training: ``static``, ``set`` and ``rigl`` on values and indices.

:class:`TrulySparseTrainer` plays the engine's role for a model made of
:class:`~sparse_kernels_cuda.truly_sparse.SparseLinear` layers. It takes the
algorithm's configuration from sparsecore's registry (its
:class:`~sparsecore.UpdateSchedule`: when updates run and their prune rate)
and runs each update natively on the active weights:

* prune: per layer, the ``floor(rate * nnz)`` active weights of smallest
  ``|w|`` (ties to the lower position), as the engine's default;
* grow, as many in the same layer, among the weights inactive after pruning:
  ``set`` and ``static`` at random (:func:`~.sampling.permutation_growth`,
  the engine's draw, or :func:`~.sampling.sample_inactive`, see ``growth``),
  ``rigl`` where the dense gradient of the update step is largest, computed
  a block of rows at a time (:meth:`SparseLinear.dense_grad_rows`);
* the new structure is rebuilt; a weight active before and after keeps its
  value and optimizer state, a newly grown one starts at 0 with zero state.

With the same seed, masks and weights, a run follows the masked engine's
trajectory (``sparsecore.Sparsifier(..., algorithm=...)``): same masks, and
weights and losses equal up to floating-point summation order.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from sparse_kernels_cuda.truly_sparse import sampling
from sparse_kernels_cuda.truly_sparse.layer import SparseLinear
from sparse_kernels_cuda.truly_sparse.sampling import AUTO_PERMUTATION_LIMIT
from sparsecore import ConfigurationError, SparsecoreError, Sparsifier, TopologyReport, UpdateSchedule
from sparsecore.plugins import instantiate, registry
from sparsecore.reporting import LayerUpdate

__all__ = ["GROWTH_MODES", "SUPPORTED_ALGORITHMS", "TrulySparseTrainer", "memory_report"]

#: Algorithms the driver runs natively.
SUPPORTED_ALGORITHMS = ("static", "set", "rigl")
#: Ways to draw random growth: the engine's permutation, rejection sampling, or the first when it fits.
GROWTH_MODES = ("auto", "permutation", "sampling")


class TrulySparseTrainer:
    """Runs a sparse algorithm's topology updates on the ``SparseLinear`` layers of a model.

    Like the engine it hooks the optimizer: after every ``optimizer.step()``
    it counts the step and runs the scheduled update; call :meth:`epoch_end`
    after every epoch for epoch schedules. Every layer's ``values`` must be in
    the optimizer; per-value state (momentum buffers, Adam moments) is
    remapped at every update.

    Example:
        ```python
        model = nn.Sequential(SparseLinear.random(784, 100_000, 0.001, g), nn.ReLU(), ...)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        trainer = TrulySparseTrainer(model, optimizer, "set", total_steps=steps, seed=0, update_every=100)
        for x, y in batches:
            optimizer.zero_grad(); F.cross_entropy(model(x), y).backward(); optimizer.step()
        ```

    Args:
        model: holds the :class:`SparseLinear` layers (other layers train densely).
        optimizer: holds every layer's ``values``.
        algorithm: ``"static"``, ``"set"`` or ``"rigl"``.
        total_steps: optimizer steps in the run (required by ``rigl`` and decaying schedules).
        seed: seed of :attr:`generator` (every random choice); default drawn from torch's global RNG.
        growth: random growth of ``set``/``static``: ``"permutation"`` (the
            engine's draw: same seed, same masks; holds one int64 per inactive
            weight), ``"sampling"`` (rejection sampling, memory ``O(nnz)``;
            a masked run draws the same with
            :class:`~sparse_kernels_cuda.truly_sparse.SampledGrowth`), or
            ``"auto"``: ``"permutation"`` for a layer with at most
            :data:`AUTO_PERMUTATION_LIMIT` inactive weights, else ``"sampling"``.
        chunk_elements: scores alive at once while RigL ranks the dense gradient
            (rows per block: ``max(1, chunk_elements // in_features)``).
        **options: the algorithm's options (``prune_rate``, ``update_every``, ...),
            checked by the algorithm itself.

    Attributes:
        layers: name → :class:`SparseLinear`, in model order.
        step: optimizer steps completed.
        epoch: the last epoch reported to :meth:`epoch_end`.
        schedule: the algorithm's :class:`~sparsecore.UpdateSchedule` (``None`` for ``static``).
        generator: the ``torch.Generator`` of every random choice.
        history: :class:`~sparsecore.TopologyReport` of every update.

    Raises:
        ConfigurationError: an unsupported algorithm, a bad option, no
            ``SparseLinear`` layer, a layer's ``values`` missing from the
            optimizer, or ``rigl`` without ``total_steps``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, algorithm: str = "set",
                 total_steps: int | None = None, *, seed: int | None = None, growth: str = "auto",
                 chunk_elements: int = 2**24, **options: Any) -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ConfigurationError(f"truly sparse training runs {list(SUPPORTED_ALGORITHMS)}, not {algorithm!r}")
        if growth not in GROWTH_MODES:
            raise ConfigurationError(f"growth must be one of {list(GROWTH_MODES)}, got {growth!r}")
        if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements <= 0:
            raise ConfigurationError(f"chunk_elements must be a positive int, got {chunk_elements!r}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps <= 0):
            raise ConfigurationError(f"total_steps must be a positive int or None, got {total_steps!r}")
        if algorithm == "rigl" and total_steps is None:
            raise ConfigurationError("rigl needs total_steps (steps_per_epoch * epochs): updates stop at "
                                     "update_end * total_steps and the drop fraction decays over those steps")
        self.layers: dict[str, SparseLinear] = {name: m for name, m in model.named_modules()
                                                if isinstance(m, SparseLinear)}
        if not self.layers:
            raise ConfigurationError("the model has no SparseLinear layer (convert it with to_truly_sparse or build "
                                     "SparseLinear layers)")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, layer in self.layers.items() if id(layer.values) not in held]
        if missing:
            raise ConfigurationError(f"the optimizer does not hold the values of SparseLinear layer(s) {missing}; "
                                     "build it over model.parameters() after converting the model")
        self.algorithm_name = algorithm
        algo = instantiate(registry.algorithm(algorithm), options)
        self.schedule: UpdateSchedule | None = getattr(algo, "schedule", None)
        if self.schedule is not None:
            self.schedule.bind(total_steps)
        self.model, self.optimizer = model, optimizer
        self.total_steps = total_steps
        self.growth, self.chunk_elements = growth, chunk_elements
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.step = 0
        self.epoch: int | None = None
        self.steps_per_epoch: int | None = None
        self._epoch_start_step = 0
        self.history: list[TopologyReport] = []
        self._handle = optimizer.register_step_post_hook(self._after_step)
        self._arm_capture()

    @classmethod
    def from_sparsifier(cls, sparsifier: Sparsifier, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                        growth: str = "auto", chunk_elements: int = 2**24) -> TrulySparseTrainer:
        """Continue a masked run in truly sparse form, from the same schedule position and random state.

        Call it on a model converted with
        :func:`~sparse_kernels_cuda.truly_sparse.to_truly_sparse` from the
        sparsifier's masks, with an optimizer over the converted model. The
        trainer takes the sparsifier's algorithm, schedule, ``total_steps``,
        step, epoch and generator state, so the runs continue identically.
        Detach the sparsifier (``sparsifier.remove()``) from the masked model.

        Raises:
            ConfigurationError: an algorithm the driver does not run, a block or
                N:M run, or sparse layers of the sparsifier that are not
                ``SparseLinear`` in ``model``.
        """
        name = sparsifier.algorithm_name
        if name not in SUPPORTED_ALGORITHMS:
            raise ConfigurationError(f"truly sparse training runs {list(SUPPORTED_ALGORITHMS)}, not {name!r}")
        if sparsifier.pattern is not None:
            raise ConfigurationError(f"truly sparse training is unstructured; this run has pattern "
                                     f"{sparsifier.pattern!r}")
        options: dict[str, Any] = {}
        if sparsifier.schedule is not None:
            accepted = inspect.signature(registry.algorithm(name).factory).parameters
            options = {k: v for k, v in sparsifier.schedule.config().items() if k in accepted}
        trainer = cls(model, optimizer, name, sparsifier.total_steps, seed=sparsifier.seed, growth=growth,
                      chunk_elements=chunk_elements, **options)
        mine = None if trainer.schedule is None else trainer.schedule.config()
        theirs = None if sparsifier.schedule is None else sparsifier.schedule.config()
        if mine != theirs:
            raise ConfigurationError(f"{name}: cannot reproduce the sparsifier's schedule {theirs} (got {mine})")
        if list(trainer.layers) != list(sparsifier.layers):
            raise ConfigurationError(f"the model's SparseLinear layers {list(trainer.layers)} are not the "
                                     f"sparsifier's sparse layers {list(sparsifier.layers)}")
        trainer.step, trainer.epoch = sparsifier.step, sparsifier.epoch
        trainer.steps_per_epoch = sparsifier.steps_per_epoch
        trainer._epoch_start_step = sparsifier._epoch_start_step
        trainer.generator.set_state(sparsifier.generator.get_state())
        trainer._arm_capture()
        return trainer

    # ------------------------------------------------------------------
    # the training loop
    # ------------------------------------------------------------------
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        if self.schedule is not None and self.schedule.due_after_step(self.step):
            self.update_topology(self.schedule.rate(self.step))
        self._arm_capture()

    def epoch_end(self, epoch: int) -> None:
        """Tell the driver an epoch ended; runs an epoch-scheduled update (never after the final epoch)."""
        if self.steps_per_epoch is None and self.step > self._epoch_start_step:
            self.steps_per_epoch = self.step - self._epoch_start_step
        self._epoch_start_step = self.step
        self.epoch = epoch
        if self.schedule is not None and self.schedule.due_after_epoch(self.is_final_epoch()):
            self.update_topology(self.schedule.rate(self.step))

    def is_final_epoch(self) -> bool:
        """Whether the steps reach ``total_steps`` (within half an epoch), as the engine decides it."""
        if self.total_steps is None:
            return False
        return self.step + (self.steps_per_epoch or 0) // 2 >= self.total_steps

    def is_update_step(self, step: int) -> bool:
        """Whether a scheduled update runs right after optimizer step ``step``."""
        return self.schedule is not None and self.schedule.due_after_step(step)

    def _arm_capture(self) -> None:
        """RigL: keep inputs and output gradients during exactly the steps that end with an update."""
        capture = self.algorithm_name == "rigl" and self.is_update_step(self.step + 1)
        for layer in self.layers.values():
            layer.capture_dense_grad = capture
            if not capture:
                layer.clear_captured()

    def remove(self) -> None:
        """Detach from the optimizer and stop capturing; the layers keep their structure."""
        self._handle.remove()
        for layer in self.layers.values():
            layer.capture_dense_grad = False
            layer.clear_captured()

    # ------------------------------------------------------------------
    # topology
    # ------------------------------------------------------------------
    def update_topology(self, rate: float) -> TopologyReport:
        """Prune ``floor(rate * nnz)`` weights of every layer and regrow as many in the same layer.

        Args:
            rate: fraction of every layer's active weights replaced, in [0, 1].

        Returns:
            The :class:`~sparsecore.TopologyReport` (also appended to :attr:`history`).

        Raises:
            ConfigurationError: ``rate`` outside [0, 1].
            SparsecoreError: ``rigl`` without a captured dense gradient (an
                update called by hand instead of by the schedule).
        """
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"prune rate must be in [0, 1], got {rate}")
        before, kept, counts = {}, {}, {}
        with torch.no_grad():
            for name, layer in self.layers.items():  # every layer prunes before any grows, as in the engine
                positions = layer.positions()
                n = math.floor(rate * layer.nnz)
                keep = torch.ones(layer.nnz, dtype=torch.bool, device=positions.device)
                if n:
                    keep[torch.argsort(layer.values.detach().abs().float(), stable=True)[:n]] = False
                before[name], kept[name], counts[name] = positions, positions[keep], n
            updates = {}
            for name, layer in self.layers.items():
                grown = self._grow(name, layer, kept[name], counts[name])
                new = torch.cat([kept[name], grown]).sort().values
                survivors = self._rebuild(layer, before[name], new)
                updates[name] = LayerUpdate(before[name].numel() - survivors, new.numel() - survivors, layer.nnz,
                                            layer.density)
        for layer in self.layers.values():
            layer.clear_captured()
        report = TopologyReport(self.step, self.epoch, rate, updates, "update")
        self.history.append(report)
        return report

    def _grow(self, name: str, layer: SparseLinear, active: Tensor, n: int) -> Tensor:
        if self.algorithm_name == "rigl":
            if not layer.captured_batches:
                raise SparsecoreError(f"rigl: no dense gradient of step {self.step} for layer {name!r}; RigL grows "
                                      "by the dense gradient kept on the schedule's update steps, so its updates "
                                      "must come from the schedule, not from calling update_topology by hand")
            rows = max(1, self.chunk_elements // layer.in_features)
            return sampling.largest_inactive(lambda a, b: layer.dense_grad_rows(a, b).abs(), active, layer.shape, n,
                                             rows)
        inactive = layer.numel - active.numel()
        if self.growth == "permutation" or (self.growth == "auto" and inactive <= AUTO_PERMUTATION_LIMIT):
            return sampling.permutation_growth(active, layer.numel, n, self.generator)
        return sampling.sample_inactive(active, layer.numel, n, self.generator)

    def _rebuild(self, layer: SparseLinear, old: Tensor, new: Tensor) -> int:
        """Move values and per-value optimizer state to the new positions; returns how many positions stayed."""
        if old.numel():
            idx = torch.searchsorted(old, new).clamp_(max=old.numel() - 1)
            found = old.index_select(0, idx) == new
        else:
            idx = torch.zeros_like(new)
            found = torch.zeros(new.shape, dtype=torch.bool, device=new.device)
        src, dst = idx[found], found.nonzero().squeeze(1)

        def remap(t: Tensor) -> Tensor:
            out = t.new_zeros(new.numel())
            out[dst] = t.index_select(0, src)
            return out

        state = self.optimizer.state.get(layer.values, {})
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == layer.values.shape:
                state[key] = remap(value)
        layer.set_structure(new, remap(layer.values.detach()))
        return int(dst.numel())

    # ------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Schedule position and random state (the structure is in the model's state dict)."""
        return {"algorithm": self.algorithm_name, "step": self.step, "epoch": self.epoch,
                "steps_per_epoch": self.steps_per_epoch, "epoch_start_step": self._epoch_start_step,
                "total_steps": self.total_steps, "seed": self.seed, "generator": self.generator.get_state(),
                "schedule": None if self.schedule is None else self.schedule.config()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (load the model's and optimizer's state as well).

        Raises:
            ConfigurationError: the state is of another algorithm, schedule or run length.
        """
        mine = None if self.schedule is None else self.schedule.config()
        for key, value in (("algorithm", self.algorithm_name), ("schedule", mine), ("total_steps", self.total_steps)):
            if state.get(key) != value:
                raise ConfigurationError(f"checkpoint has {key}={state.get(key)!r}, this run uses {value!r}")
        self.step, self.epoch = int(state["step"]), state["epoch"]
        self.steps_per_epoch, self._epoch_start_step = state["steps_per_epoch"], int(state["epoch_start_step"])
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])
        self._arm_capture()

    def __repr__(self) -> str:
        nnz = sum(layer.nnz for layer in self.layers.values())
        return (f"TrulySparseTrainer(algorithm={self.algorithm_name!r}, layers={len(self.layers)}, nnz={nnz}, "
                f"step={self.step})")


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes held by the ``SparseLinear`` layers of ``model``: values, gradients, optimizer state, indices.

    ``values`` and ``grads`` count the active weights; ``optimizer_state``
    every state tensor of the layers' parameters (values and bias).

    Returns:
        ``{"nnz", "dense_numel", "values", "grads", "optimizer_state", "indices", "total"}``
        (``dense_numel``: weights the dense form would hold).
    """
    out = dict.fromkeys(("nnz", "dense_numel", "values", "grads", "optimizer_state", "indices"), 0)
    for layer in model.modules():
        if not isinstance(layer, SparseLinear):
            continue
        v = layer.values
        out["nnz"] += layer.nnz
        out["dense_numel"] += layer.numel
        out["values"] += v.numel() * v.element_size()
        out["grads"] += 0 if v.grad is None else v.grad.numel() * v.grad.element_size()
        out["indices"] += layer.index_bytes()
        if optimizer is not None:
            out["optimizer_state"] += sum(t.numel() * t.element_size() for p in layer.parameters()
                                          for t in optimizer.state.get(p, {}).values() if torch.is_tensor(t))
    out["total"] = out["values"] + out["grads"] + out["optimizer_state"] + out["indices"]
    return out
