"""A 2-process ``ddp_spawn`` or ``ddp`` fit on gloo for test_distributed.py; each rank writes what it ended with.

:func:`run_ranks` (or ``python lightning_ddp_worker.py OUT_DIR [STRATEGY]``) fits; under ``ddp``
Lightning starts this script again for rank 1, so that strategy runs from the command line. The ranks
seed torch's global generator differently before the sparsifier is built (so it draws a different
seed on each) and see different halves of the data; each rank writes
``rank<N>.json`` with digests of its masks and weights, its step count, its
updates and whether the engine's step pre-hook saw a gradient at every step.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
from lightning_helpers import GradientRecorder, TinyModule, make_loader  # noqa: E402

from sparsecore_lightning import SparsityCallback  # noqa: E402


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankReport(pl.Callback):
    """Seeds each rank differently at set-up and writes the rank's outcome at the end of training."""

    def __init__(self, out_dir: str, sparsity: SparsityCallback, grads: GradientRecorder) -> None:
        self.out_dir, self.sparsity, self.grads = Path(out_dir), sparsity, grads

    def setup(self, trainer, pl_module, stage):
        torch.manual_seed(1000 + trainer.global_rank)

    def on_train_end(self, trainer, pl_module):
        sparsifier = self.sparsity.sparsifier
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "masks": digest(layer.mask for layer in sparsifier.layers.values()),
            "weights": digest(pl_module.state_dict().values()),
            "seed": sparsifier.seed,
            "step": sparsifier.step,
            "global_step": trainer.global_step,
            "updates": [sum(u.grown for u in r.layers.values()) for r in sparsifier.history],
            "grads_seen": len(self.grads.norms) == sparsifier.step and all(
                n is not None for norms in self.grads.norms for n in norms),
            "inactive_zero": all(not layer.weight[~layer.mask].any() for layer in sparsifier.layers.values()),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def run_ranks(out_dir: str | Path, strategy: str = "ddp_spawn") -> TinyModule:
    """Fit the tiny module on 2 CPU ranks; each writes ``rank<N>.json`` into ``out_dir``.

    Returns the module of this process: under ``ddp_spawn`` with the weights Lightning copied back from
    rank 0, under ``ddp`` the rank's own.
    """
    grads = GradientRecorder()
    sparsity = SparsityCallback("set", density=0.25, update_every=2, plugins=[grads])
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[sparsity, RankReport(str(out_dir), sparsity, grads)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        module = TinyModule()
        trainer.fit(module, make_loader())
    return module


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_ranks(sys.argv[1], *sys.argv[2:3])
