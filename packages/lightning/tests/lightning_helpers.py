"""A tiny LightningModule, random data, a Trainer for fast CPU runs, and the plain training loop they must match."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import sparsecore
from sparsecore.testing import make_tiny_model

BATCHES, BATCH_SIZE = 8, 8


class TinyModule(pl.LightningModule):
    """``make_tiny_model`` (three sparse Linear layers, 1376 weights) trained with SGD + momentum."""

    def __init__(self, seed: int = 0, lr: float = 0.1) -> None:
        super().__init__()
        self.net = make_tiny_model(seed)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class ValidatedModule(TinyModule):
    """:class:`TinyModule` with a validation loss."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def make_loader(seed: int = 0, batches: int = BATCHES) -> DataLoader:
    """Random 16-feature inputs with 4 classes, in a fixed order."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH_SIZE, 16, generator=gen)
    y = torch.randint(0, 4, (batches * BATCH_SIZE,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=False)


def make_trainer(tmp_path, callbacks, max_epochs: int = 3, **options: Any) -> pl.Trainer:
    """A quiet single-process CPU Trainer (no logger, no progress bar, no default checkpoints)."""
    settings: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "max_epochs": max_epochs, "logger": False,
                                "enable_checkpointing": False, "enable_progress_bar": False,
                                "enable_model_summary": False, "num_sanity_val_steps": 0,
                                "default_root_dir": str(tmp_path)}
    settings.update(options)
    return pl.Trainer(callbacks=callbacks, **settings)


def fit(trainer: pl.Trainer, module: pl.LightningModule, loader: DataLoader, **options: Any) -> None:
    """``trainer.fit`` without Lightning's advice about dataloader workers on a 2-core machine."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning on a newer torch
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        trainer.fit(module, loader, **options)


class GradientRecorder:
    """A plugin that records, at each ``before_optimizer_step``, the gradient norm of every sparse weight."""

    name = "gradient-recorder"

    def __init__(self) -> None:
        self.norms: list[list[float | None]] = []

    @sparsecore.hookimpl
    def before_optimizer_step(self, sparsifier: sparsecore.Sparsifier) -> None:
        self.norms.append([None if layer.weight.grad is None else float(layer.weight.grad.norm())
                           for layer in sparsifier.layers.values()])


def plain_loop(module: TinyModule, loader: DataLoader, epochs: int, algorithm: str = "set", density: float = 0.25,
               accumulate: int = 1, clip: float | None = None, autocast_dtype: torch.dtype | None = None,
               **sparsifier_kwargs: Any) -> sparsecore.Sparsifier:
    """The hand-written loop sparsecore documents, with accumulation, clipping and CPU autocast as Lightning does."""
    optimizer = module.configure_optimizers()
    total_steps = epochs * (len(loader) // accumulate)
    sparsifier = sparsecore.Sparsifier(module, optimizer, algorithm, density, total_steps=total_steps,
                                       **sparsifier_kwargs)
    for epoch in range(epochs):
        for i, batch in enumerate(loader):
            with torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                loss = module.training_step(batch, i) / accumulate
            loss.backward()
            if (i + 1) % accumulate:
                continue
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()
        sparsifier.epoch_end(epoch)
    return sparsifier


def masks_of(sparsifier: sparsecore.Sparsifier) -> dict[str, torch.Tensor]:
    """Copies of every layer's mask."""
    return {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}


class StopAfterEpoch(pl.Callback):
    """Ends ``fit`` after the given epoch, as an interrupted run would (before its checkpoint is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True
