"""The training job behind ``sparsecore train`` and ``sparsecore reproduce``.

Example:
    ```python
    from sparsecore.train import TrainConfig, run_training, resume_training

    result = run_training(TrainConfig(algorithm="set", density=0.05, epochs=5))
    print(f"{result.test_accuracy:.2%} at density {result.density:.3f}; run folder {result.run_dir}")
    resume_training(result.run_dir, epochs=10)   # train five more epochs

    config = config_from_file("my-run.toml", epochs=3)   # what `--config my-run.toml --epochs 3` trains
    print(dump_config(config))                            # what `--print-config` writes
    ```
"""

from sparsecore.train.checkpoint import load_checkpoint
from sparsecore.train.cli import config_from_file
from sparsecore.train.config import TrainConfig, parse_options, parse_plugin_options, parse_value
from sparsecore.train.config_files import dump_config, load_config_file
from sparsecore.train.errors import RunFolderError, TrainingDivergedError, TrainingInterrupted
from sparsecore.train.job import RunResult, evaluate, resume_training, run_training, train_epoch
from sparsecore.train.recipes import RECIPES, Recipe, get_recipe, list_recipes, recipe_config

__all__ = [
    "RECIPES",
    "Recipe",
    "RunFolderError",
    "RunResult",
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "config_from_file",
    "dump_config",
    "evaluate",
    "get_recipe",
    "list_recipes",
    "load_checkpoint",
    "load_config_file",
    "parse_options",
    "parse_plugin_options",
    "parse_value",
    "recipe_config",
    "resume_training",
    "run_training",
    "train_epoch",
]
