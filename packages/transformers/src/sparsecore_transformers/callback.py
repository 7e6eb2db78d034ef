"""A Hugging Face ``TrainerCallback`` that trains the model sparse with any sparsecore algorithm.

When the callback acts (transformers' ``Trainer``):

* ``on_train_begin``: the first event where the optimizer exists (the Trainer
  creates it lazily and accelerate wraps it in ``AcceleratedOptimizer``, which
  refuses step hooks). The :class:`~sparsecore.Sparsifier` is built on the
  inner torch optimizer; on a resumed run its state is read back from the
  checkpoint folder.
* every optimizer step: nothing to do here; the engine's step hooks keep the
  masks and run step-scheduled updates (``update_every=k``).
* the last step of every epoch (``on_step_end``), or ``on_epoch_end`` of an
  epoch cut short: :meth:`Sparsifier.epoch_end <sparsecore.Sparsifier.epoch_end>`,
  which runs epoch-scheduled updates. Doing it at the last step, before the
  Trainer logs, evaluates and saves, puts the update into a checkpoint taken at
  that step, whatever the save strategy.
* ``on_save``: the sparsifier's state is written beside the checkpoint
  (:data:`~sparsecore_transformers.checkpoint.STATE_FILE`).
* ``on_train_end``: with ``load_best_model_at_end``, the masks of the best
  checkpoint are restored with its weights.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.pytorch_utils import Conv1D

from sparsecore.errors import ConfigurationError
from sparsecore.sparsifier import Sparsifier
from sparsecore_transformers.checkpoint import checkpoint_dir, find_state_dir, load_state, save_state
from sparsecore_transformers.selection import LayerSelection, transformer_layer_selection

#: Sparsifier arguments that choose the layers themselves (then the transformer selection is not used).
SELECTION_KEYS = ("include", "exclude", "layer_types")


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` wrappers (or the optimizer itself).

    Raises:
        ConfigurationError: no torch optimizer that takes step hooks is inside.
    """
    inner = optimizer
    while isinstance(inner, AcceleratedOptimizer):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer) or not hasattr(inner, "_optimizer_step_pre_hooks"):
        raise ConfigurationError(f"the Trainer's optimizer {type(optimizer).__name__} holds no torch optimizer that "
                                 "takes step hooks (DeepSpeed's optimizers are not supported)")
    return inner


class SparsityCallback(TrainerCallback):
    """Trains a transformers model sparse under the Hugging Face ``Trainer``, with any sparsecore algorithm.

    By default the attention and MLP projections of the transformer blocks are
    sparse (GPT-2's fused ``Conv1D`` included) and embeddings, the output layer,
    heads, norms and biases stay dense (:func:`transformer_layer_selection`).
    ``total_steps`` defaults to the Trainer's ``max_steps`` and ``seed`` to
    ``TrainingArguments.seed``. The sparsifier's state is saved beside every
    checkpoint, so ``trainer.train(resume_from_checkpoint=...)`` continues
    exactly where the interrupted run was: same masks, weights, schedule
    position and random state.

    Example:
        ```python
        callback = SparsityCallback("set", density=0.1, update_every=100)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train()
        print(callback.sparsifier.report().table())
        ```

    Args:
        algorithm: a registered algorithm name or a plugin object, as for ``Sparsifier``.
        density: overall density of the sparse layers (``None``: the algorithm's default).
        embeddings: make the input embeddings sparse too (transformer selection only).
        output_layer: make the output layer (``lm_head``) sparse too.
        heads: make poolers, classifiers and other layers outside the blocks sparse too.
        **sparsifier_kwargs: any other ``Sparsifier`` argument (``distribution``,
            ``plugins``, ``block``, ``pattern``, algorithm options such as
            ``update_every``...). Passing ``include``, ``exclude`` or
            ``layer_types`` replaces the transformer selection by the engine's own.

    Attributes:
        sparsifier: the run's :class:`~sparsecore.Sparsifier` (``None`` before
            training starts). It stays attached after training; the next
            ``train()`` builds a new one.
        selection: the :class:`LayerSelection` in force (``None`` when you chose the layers yourself).

    Raises:
        ConfigurationError: ``model`` or ``optimizer`` among the keyword
            arguments, or the transformer flags together with your own layer selection.
    """

    def __init__(self, algorithm: str | Any = "set", density: float | None = None, *, embeddings: bool = False,
                 output_layer: bool = False, heads: bool = False, **sparsifier_kwargs: Any) -> None:
        taken = sorted({"model", "optimizer"} & set(sparsifier_kwargs))
        if taken:
            raise ConfigurationError(f"SparsityCallback: {taken} cannot be passed; the Trainer supplies the model "
                                     "and its optimizer when training starts")
        own = [key for key in SELECTION_KEYS if key in sparsifier_kwargs]
        flags = [name for name, on in (("embeddings", embeddings), ("output_layer", output_layer),
                                       ("heads", heads)) if on]
        if own and flags:
            raise ConfigurationError(f"SparsityCallback: {flags} choose layers of the transformer selection, which "
                                     f"{own} replace; add those layers to your own include instead")
        self.algorithm = algorithm
        self.density = density
        self.selection_options = {"embeddings": embeddings, "output_layer": output_layer, "heads": heads}
        self.sparsifier_kwargs = sparsifier_kwargs
        self.sparsifier: Sparsifier | None = None
        self.selection: LayerSelection | None = None

    # ------------------------------------------------------------------
    def _options(self, model: nn.Module, args: TrainingArguments, state: TrainerState) -> dict[str, Any]:
        options = dict(self.sparsifier_kwargs)
        if not any(key in options for key in SELECTION_KEYS):
            self.selection = transformer_layer_selection(model, **self.selection_options)
            options.update(self.selection.sparsifier_kwargs())
        else:
            self.selection = None
        if (options.get("pattern") is not None and self.selection is not None
                and any(isinstance(m, Conv1D) for m in model.modules())):
            raise ConfigurationError(
                f"SparsityCallback: pattern={options['pattern']!r} groups weights along dim 1, which in transformers' "
                "Conv1D (weight [in, out]) is the output dimension, not the input one N:M kernels need; choose layers "
                "without them yourself (include=/layer_types=) or convert them to nn.Linear")
        if state.max_steps and state.max_steps > 0:
            options.setdefault("total_steps", int(state.max_steps))
        options.setdefault("seed", int(args.seed))
        return options

    def _sparsifier(self, model: nn.Module, optimizer: torch.optim.Optimizer, options: dict[str, Any],
                    resume_from: dict[str, Any] | None = None) -> Sparsifier:
        """A new sparsifier, or (``resume_from``: a saved state) one resumed on the weights the Trainer loaded."""
        with warnings.catch_warnings():
            if self.selection is not None:  # it keeps embeddings dense on purpose and lists them in .dense
                warnings.filterwarnings("ignore", message="these modules stay dense", category=UserWarning)
            if resume_from is None:
                return Sparsifier(model, optimizer, self.algorithm, self.density, **options)
            return Sparsifier.resume(model, optimizer, resume_from, self.algorithm, self.density, **options)

    def _build(self, model: nn.Module, optimizer: torch.optim.Optimizer, args: TrainingArguments,
               state: TrainerState) -> Sparsifier:
        options = self._options(model, args, state)
        if not state.global_step:
            return self._sparsifier(model, optimizer, options)
        directory = find_state_dir([getattr(args, "resume_from_checkpoint", None),
                                    checkpoint_dir(str(args.output_dir), state.global_step)], state.global_step)
        saved = load_state(directory, state.global_step)
        return self._sparsifier(model, optimizer, options, resume_from=saved)

    def _end_epoch(self, epoch: int) -> None:
        """Report epoch ``epoch`` (0-based) ended, once."""
        if self.sparsifier is not None and epoch >= 0 and self.sparsifier.epoch != epoch:
            self.sparsifier.epoch_end(epoch)

    # ------------------------------------------------------------------
    # Trainer events
    # ------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        """Build the sparsifier on the inner torch optimizer (and restore its state on a resumed run).

        Raises:
            ConfigurationError: the Trainer passed no model or optimizer, or a bad ``Sparsifier`` argument.
            CheckpointError: a resumed run whose checkpoint holds no (or another) sparsifier state.
        """
        if model is None or optimizer is None:
            raise ConfigurationError("SparsityCallback: the Trainer passed no model or optimizer to on_train_begin")
        if self.sparsifier is not None:
            self.sparsifier.remove()  # a previous train() call's; the masks it applied stay
            self.sparsifier = None
        self.sparsifier = self._build(model, torch_optimizer(optimizer), args, state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        """At the last optimizer step of an epoch (``state.epoch`` whole), report the epoch's end."""
        if state.epoch is not None and float(state.epoch).is_integer():
            self._end_epoch(int(state.epoch) - 1)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Report the end of an epoch cut short (``max_steps``, early stopping); a full one was reported already."""
        if state.epoch is not None:
            self._end_epoch(math.ceil(state.epoch) - 1)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        """Write the sparsifier's state into the checkpoint folder just written (main process only)."""
        if self.sparsifier is not None and args.should_save:
            save_state(checkpoint_dir(str(args.output_dir), state.global_step), self.sparsifier, state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """With ``load_best_model_at_end``, give the sparsifier the masks of the best checkpoint's weights."""
        if self.sparsifier is not None and args.load_best_model_at_end and state.best_model_checkpoint:
            self.sparsifier.load_state_dict(load_state(state.best_model_checkpoint))
