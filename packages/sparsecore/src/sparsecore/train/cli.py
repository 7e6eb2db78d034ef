"""``sparsecore train``: the command-line face of :func:`sparsecore.train.run_training`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from sparsecore.errors import ConfigurationError, SparsecoreError
from sparsecore.train.config import (
    LR_SCHEDULES,
    OPTIMIZERS,
    TrainConfig,
    flag_name,
    parse_options,
    parse_plugin_options,
)
from sparsecore.train.config_files import dump_config, file_format, load_config_file
from sparsecore.train.recipes import RECIPES, get_recipe

S = argparse.SUPPRESS

EPILOG = """examples:
  sparsecore train                                  LeNet-300-100, MNIST, 5% density, 5 epochs
  sparsecore train --dense                          the same recipe without sparsity
  sparsecore train --algorithm set --density 0.02 --epochs 10 --option prune_rate=0.5
  sparsecore train --recipe snfs-mnist              the sparse momentum paper's MNIST recipe
  sparsecore train --config my-run.toml --epochs 3  a config file, one value overridden
  sparsecore train --recipe snfs-mnist --print-config > my-run.toml    a recipe as a file to edit
  sparsecore train --plugins sparse-kernels-cuda --plugin-option sparse-kernels-cuda.backend=csr
  sparsecore train --resume runs/<folder>           continue a stopped run exactly
recipes: """ + ", ".join(RECIPES)


def _csv(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def os_error_line(exc: OSError) -> str:
    """An ``OSError`` as one line: the reason, then the file(s) it is about."""
    files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {files}" if files else reason


def finite_float(text: str) -> float:
    """An argparse type: a float that is not ``inf`` or ``nan``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to the ``sparsecore`` parser."""
    p = subparsers.add_parser(
        "train", help="train a reference model sparse (or dense) and leave a run folder with metrics and plots",
        description="Train a reference model with a sparse training algorithm; writes "
                    "runs/<timestamp>-<algorithm>-<model>/ (config.json, metrics.jsonl, checkpoint.pt, summary.md, "
                    "plots). Values come from the defaults, then --recipe, then --config FILE, then the flags "
                    "given.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=S)
    d = TrainConfig()
    g = p.add_argument_group("what to train")
    g.add_argument("--recipe", metavar="NAME", help=f"a paper recipe: {', '.join(RECIPES)}")
    g.add_argument("--config", metavar="FILE", dest="config_file",
                   help="a TOML or YAML config file (keys: the long flags' names; [options] and "
                        "[plugin_options.NAME] tables); flags given override its values")
    g.add_argument("--print-config", nargs="?", const="", metavar="FORMAT", choices=("", "toml", "yaml"),
                   help="print the resolved config as a config file (toml, or yaml; default: --config's format, "
                        "else toml) and exit")
    g.add_argument("--algorithm", metavar="NAME",
                   help="registered algorithm (see `sparsecore plugins`); default sparse-momentum, or set when "
                        "sparse-momentum is not installed")
    g.add_argument("--density", type=finite_float, help="fraction of weights kept (default: the algorithm's, 0.05; "
                                                  "dsd: 0.7 in its sparse phase)")
    g.add_argument("--distribution", metavar="NAME", help="per-layer densities: uniform, erk, er "
                                                          "(default: the algorithm's choice, else uniform)")
    g.add_argument("--option", action="append", metavar="KEY=VALUE", dest="option_items",
                   help="algorithm option, repeatable; values parse as int/float/bool/JSON (e.g. prune_rate=0.5)")
    g.add_argument("--plugins", nargs="+", metavar="NAME", help="extra non-algorithm plugins by name")
    g.add_argument("--plugin-option", action="append", metavar="NAME.KEY=VALUE", dest="plugin_option_items",
                   help="option of a plugin named in --plugins, repeatable; values parse as for --option "
                        "(e.g. sparse-kernels-cuda.backend=csr)")
    g.add_argument("--dense", action="store_true", help="train the same recipe without sparsity (baseline)")
    g.add_argument("--model", metavar="NAME", help=f"reference model, e.g. lenet-300-100, lenet-5-caffe, wrn-16-8, "
                                                   f"vgg16-d, resnet-50, gpt-tiny (default {d.model})")
    g.add_argument("--dataset", metavar="NAME", help=f"mnist, fashion-mnist, cifar10, cifar100, imagenet, random, "
                                                     f"python-stdlib (bytes of the Python standard library's "
                                                     f"sources, for gpt-tiny) (default {d.dataset})")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    g.add_argument("--lr", type=finite_float, help=f"initial learning rate (default {d.lr})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    g.add_argument("--momentum", type=finite_float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (default on)")
    g.add_argument("--weight-decay", type=finite_float, help=f"default {d.weight_decay}")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help=f"step: x gamma every --lr-step-size iterations; multistep: x gamma at --lr-milestones "
                        f"epochs; cosine: to 0 over the run; none (default {d.lr_schedule})")
    g.add_argument("--lr-step-size", type=int, metavar="ITERS", help=f"default {d.lr_step_size}")
    g.add_argument("--lr-gamma", type=finite_float, help=f"default {d.lr_gamma}")
    g.add_argument("--lr-milestones", type=_csv(int), metavar="E1,E2", help="epochs of the multistep decays")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g = p.add_argument_group("data and machine")
    g.add_argument("--data-dir", metavar="DIR", help="torchvision data directory (default: offline packages)")
    g.add_argument("--download", action="store_true", help="let torchvision download missing data")
    g.add_argument("--augment", action="store_true", help="use the dataset's training augmentation (CIFAR)")
    g.add_argument("--limit-train", type=int, metavar="N", help="train on the first N samples only")
    g.add_argument("--limit-test", type=int, metavar="N", help="evaluate on the first N test samples only")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default auto")
    g.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="convolution weights in the channels-last memory format (faster convolutions for some "
                        "models; default off)")
    g = p.add_argument_group("output")
    g.add_argument("--runs-dir", metavar="DIR", help=f"parent of run folders (default {d.runs_dir}/)")
    g.add_argument("--run-name", metavar="NAME", help="run folder name (default <timestamp>-<algorithm>-<model>)")
    g.add_argument("--no-plots", action="store_false", dest="plots", help="skip the PNG plots")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    g.add_argument("--resume", metavar="PATH", help="continue the run in this folder (or checkpoint file)")
    g.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs of this invocation, leaving a resumable checkpoint")
    p.set_defaults(func=train_command)
    return p


#: Parsed arguments that are not config fields.
NOT_CONFIG = ("func", "command", "resume", "option_items", "plugin_option_items", "recipe", "config_file",
              "print_config")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the config from parsed flags: defaults, then the recipe, then the config file, then explicit flags.

    Algorithm options merge key by key in the same order (``--dense`` drops the recipe's); plugin options merge
    per plugin and key; ``--plugins`` replaces the file's list.

    Raises:
        ConfigurationError: unknown recipe, bad option syntax or value, or a config file that cannot be read,
            holds an unknown key or a bad value (the message names the file and the key).
    """
    given = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    path = getattr(args, "config_file", None)
    from_file = load_config_file(path) if path is not None else {}
    recipe = getattr(args, "recipe", None) or from_file.get("recipe")
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(get_recipe(recipe).values)
    recipe_options = dict(values.pop("options", {}))
    own_options = dict(from_file.get("options", {}))
    own_options.update(parse_options(getattr(args, "option_items", None) or []))
    plugin_options = _merge_plugin_options(values.pop("plugin_options", {}), from_file.get("plugin_options", {}),
                                           parse_plugin_options(getattr(args, "plugin_option_items", None) or []))
    values.update({k: v for k, v in from_file.items() if k not in ("options", "plugin_options")})
    if recipe is not None:
        values["recipe"] = recipe
    if "plugins" in given:
        given["plugins"] = [n for item in given["plugins"] for n in item.split(",") if n]
    values.update(given)
    options = own_options if values.get("dense") else {**recipe_options, **own_options}
    if options:
        values["options"] = options  # validate() rejects algorithm options of a --dense run with a clear message
    if plugin_options:
        values["plugin_options"] = plugin_options
    try:
        return TrainConfig.from_dict(values).validate()
    except ConfigurationError as exc:
        raise _in_file(exc, path, from_file, given) from None


def config_from_file(path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """The config ``sparsecore train --config PATH`` trains with: the file's ``recipe``, then its values, then
    ``overrides`` (config fields, as the flags would give them).

    Example:
        ```python
        from sparsecore.train import config_from_file, run_training
        run_training(config_from_file("my-run.toml", epochs=1))
        ```

    Raises:
        ConfigurationError: as :func:`config_from_args`, naming the file and the key.
    """
    return config_from_args(argparse.Namespace(config_file=os.fspath(path), **overrides))


def _merge_plugin_options(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, options in layer.items():
            merged.setdefault(name, {}).update(options)
    return merged


def _in_file(exc: ConfigurationError, path: str | None, from_file: dict[str, Any],
             given: dict[str, Any]) -> ConfigurationError:
    """The error of a value the config file set, naming the file and key; other errors unchanged."""
    if path is None:
        return exc
    message = str(exc)
    for key in from_file:
        flag = flag_name(key)
        if key not in given and message.startswith(flag) and not message[len(flag):len(flag) + 1].isalnum() \
                and message[len(flag):len(flag) + 1] != "-":
            return ConfigurationError(f"config file {path}: key {key!r}: {message[len(flag):].lstrip()}")
    return exc


def missing_extras_notices() -> list[str]:
    """One-line notices for the optional libraries of ``sparsecore[train]`` that are not installed.

    Without tqdm the run shows no progress bars (each epoch still prints its line); without matplotlib it writes
    no plots (the job says so at the end). Neither stops the run.
    """
    from importlib.util import find_spec

    if find_spec("tqdm") is None:
        return ["note: no progress bars: tqdm is not installed (pip install tqdm, or 'sparsecore[train]' for "
                "progress bars, plots and YAML config files)"]
    return []


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the resolved config as a config file on stdout; errors as one line, status 2."""
    try:
        if getattr(args, "resume", None) is not None:
            raise ConfigurationError("--print-config describes a new run; a run folder's config is in its "
                                     "config.json")
        fmt = args.print_config or (file_format(args.config_file) if getattr(args, "config_file", None) else "toml")
        sys.stdout.write(dump_config(config_from_args(args), fmt))
    except SparsecoreError as exc:
        print(f"sparsecore train: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    return 0


def one_line(text: str) -> str:
    """``text`` on one line: every character ``str.isprintable`` rejects (newlines included) as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def train_command(args: argparse.Namespace) -> int:
    """Run ``sparsecore train``; errors print one clear line and return 2.

    An error raised by the code of an installed algorithm or plugin (any exception, ``sys.exit()`` included)
    is one line naming it and where it was raised; other unexpected errors keep their traceback.
    """
    from sparsecore.data import DatasetIntegrityError, DatasetUnavailableError
    from sparsecore.train.errors import TrainingInterrupted, plugin_at_fault
    from sparsecore.train.job import resume_training, run_training

    def error(message: str) -> int:
        print(f"sparsecore train: error: {one_line(message)}", file=sys.stderr)
        return 2

    if getattr(args, "print_config", None) is not None:
        return print_config(args)
    if not getattr(args, "quiet", False):
        for notice in missing_extras_notices():
            print(notice, file=sys.stderr)
    try:
        if getattr(args, "resume", None) is not None:
            if getattr(args, "config_file", None) is not None:
                raise ConfigurationError("--config describes a new run; a resumed run keeps its configuration "
                                         "(drop --config)")
            given = {k for k in vars(args) if k not in ("func", "command", "resume")}
            resume_training(args.resume, **{k: getattr(args, k) for k in given})
        else:
            run_training(config_from_args(args))
    except (SparsecoreError, DatasetUnavailableError, DatasetIntegrityError) as exc:
        return error(str(exc))
    except KeyboardInterrupt as exc:  # TrainingInterrupted says what the run folder keeps
        said = one_line(str(exc)) if isinstance(exc, TrainingInterrupted) else "interrupted"
        print(f"\nsparsecore train: {said}", file=sys.stderr)
        return 130
    except (Exception, SystemExit) as exc:
        culprit = plugin_at_fault(exc)
        if culprit is not None:
            return error(culprit)
        if isinstance(exc, OSError):  # a file the job reads or writes outside the run folder's own error handling
            return error(os_error_line(exc))
        if isinstance(exc, ValueError):
            return error(str(exc))
        raise
    return 0
