"""Sparse training of Hugging Face transformers with sparsecore.

:class:`SparsityCallback` is a ``transformers.TrainerCallback`` that runs any
sparsecore algorithm under the ``Trainer`` and resumes exactly from its
checkpoints; :func:`transformer_layer_selection` tells which weights of a
transformer it makes sparse, and why every other parameter stays dense::

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[SparsityCallback("set", density=0.1)])
    trainer.train()
"""

from sparsecore_transformers.__about__ import __version__
from sparsecore_transformers.callback import SparsityCallback, torch_optimizer
from sparsecore_transformers.checkpoint import STATE_FILE, load_state
from sparsecore_transformers.selection import LayerSelection, find_blocks, transformer_layer_selection

__all__ = [
    "STATE_FILE",
    "LayerSelection",
    "SparsityCallback",
    "__version__",
    "find_blocks",
    "load_state",
    "torch_optimizer",
    "transformer_layer_selection",
]
