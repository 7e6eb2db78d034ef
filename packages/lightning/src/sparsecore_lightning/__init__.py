"""sparsecore for PyTorch Lightning: sparse training inside ``Trainer.fit`` through one callback.

:class:`SparsityCallback` builds a :class:`sparsecore.Sparsifier` once the
trainer's optimizer exists, drives its epoch ends, keeps its state inside
Lightning checkpoints (so ``ckpt_path=`` resumes exactly) and keeps masks
identical on every DDP rank::

    trainer = pl.Trainer(max_epochs=10, callbacks=[SparsityCallback("set", density=0.1)])
    trainer.fit(module, train_loader)
"""

from sparsecore_lightning.__about__ import __version__
from sparsecore_lightning.callback import SparsityCallback

__all__ = ["SparsityCallback", "__version__"]
