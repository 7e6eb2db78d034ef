"""TensorBoard logging for sparsecore runs, as an observer plugin.

Installing the distribution registers the plugin ``"tensorboard"``; any run
activates it by name, beside any algorithm::

    sparsecore.Sparsifier(model, optimizer, algorithm="rigl", total_steps=steps,
                          plugins=[("tensorboard", {"log_dir": "runs/tb/rigl"})])

or ``sparsecore train --plugins tensorboard [--plugin-option tensorboard.log_dir=DIR]``.
"""

from sparsecore_tensorboard.__about__ import __version__
from sparsecore_tensorboard.logger import DEFAULT_LOG_DIR, RUN_FOLDER_SUBDIR, TensorBoardLogger

__all__ = ["DEFAULT_LOG_DIR", "RUN_FOLDER_SUBDIR", "TensorBoardLogger", "__version__"]
