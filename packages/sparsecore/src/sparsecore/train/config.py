"""The configuration of a training run and the parsing of ``key=value`` algorithm options."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparsecore.errors import ConfigurationError

#: Algorithm used when none is given; falls back to :data:`FALLBACK_ALGORITHM` when not installed.
DEFAULT_ALGORITHM = "sparse-momentum"
#: Core algorithm used instead of :data:`DEFAULT_ALGORITHM` when that is not installed.
FALLBACK_ALGORITHM = "set"
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("step", "multistep", "cosine", "none")
DEVICES = ("cpu", "cuda", "auto")
#: Largest ``seed``: the harness seeds a second generator with ``seed + 1``, and torch takes signed 64-bit seeds.
MAX_SEED = 2**63 - 2


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags map one to one onto these fields).

    The defaults are the bare ``sparsecore train``: LeNet-300-100 on MNIST at 5%
    density with sparse momentum for 5 epochs, SGD with Nesterov momentum and a
    cosine learning-rate schedule.

    Attributes:
        algorithm: registered algorithm name; ``None`` means :data:`DEFAULT_ALGORITHM`,
            falling back to :data:`FALLBACK_ALGORITHM` (with a notice) when it is not installed.
        density: fraction of weights kept over all sparse layers, in (0, 1];
            ``None``: the algorithm's default (0.05; DSD keeps 0.7 in its sparse phase).
        distribution: per-layer densities: ``"uniform"``, ``"erk"``, ``"er"``, or ``None``
            for the algorithm's default.
        model: reference model name (``sparsecore.models.list_models()``).
        dataset: dataset name (``sparsecore.data.list_datasets()``).
        epochs: epochs to train.
        batch_size: training batch size.
        lr: initial learning rate.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        momentum: SGD momentum.
        nesterov: Nesterov momentum (SGD only).
        weight_decay: L2 weight decay (decoupled for AdamW).
        lr_schedule: ``"step"`` (``×lr_gamma`` every ``lr_step_size`` iterations),
            ``"multistep"`` (``×lr_gamma`` at each epoch in ``lr_milestones``),
            ``"cosine"`` (to 0 over the run, per iteration) or ``"none"``.
        lr_step_size: iterations between decays of the ``"step"`` schedule.
        lr_gamma: decay factor of ``"step"`` and ``"multistep"``.
        lr_milestones: epochs at which ``"multistep"`` decays.
        seed: seed of the model initialisation, the data order and the engine.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        plugins: extra (non-algorithm) plugin names for this run.
        options: algorithm options, passed to the algorithm's factory.
        plugin_options: plugin name -> its options, passed to that plugin's factory
            (every name must be one of ``plugins``).
        dense: train without a sparsifier (the dense baseline of the same recipe).
        recipe: name of the recipe the values came from, if any (informational).
        data_dir: torchvision data directory (``None``: the offline sources).
        download: let torchvision download missing data.
        limit_train: use only the first ``limit_train`` training samples.
        limit_test: use only the first ``limit_test`` test samples.
        augment: use the dataset's training augmentation (CIFAR crop and flip).
        eval_batch_size: batch size of the evaluation on the test split.
        runs_dir: parent directory of run folders.
        run_name: folder name inside ``runs_dir``; default ``<timestamp>-<algorithm>-<model>``.
        plots: write PNG plots.
        quiet: print nothing but errors (no progress bars, no summary).
        threads: ``torch.set_num_threads`` for the run (``None``: leave as is).
        channels_last: keep the model's 4-D weights (convolutions) in the channels-last memory
            format, which oneDNN runs faster for some convolutional networks
            (``benchmarks/results/channels_last.md``); the engine works the same, the
            convolutions round differently, so a long run drifts from the contiguous one.
        stop_after: stop after this many epochs of the run, leaving a resumable
            checkpoint (schedules still span ``epochs``); ``None`` trains to the end.
    """

    algorithm: str | None = None
    density: float | None = None
    distribution: str | None = None
    model: str = "lenet-300-100"
    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 100
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    lr_step_size: int = 25000
    lr_gamma: float = 0.1
    lr_milestones: list[int] = field(default_factory=list)
    seed: int = 17
    device: str = "auto"
    plugins: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dense: bool = False
    recipe: str | None = None
    data_dir: str | None = None
    download: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    augment: bool = False
    eval_batch_size: int = 1000
    runs_dir: str = "runs"
    run_name: str | None = None
    plots: bool = True
    quiet: bool = False
    threads: int | None = None
    channels_last: bool = False
    stop_after: int | None = None

    def validate(self) -> TrainConfig:
        """Check every value; return ``self``.

        Raises:
            ConfigurationError: the first bad value, named with its flag.
        """
        def finite_number(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _is_finite(value):
                raise ConfigurationError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")

        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")

        for name in ("lr", "momentum", "weight_decay", "lr_gamma", *(("density",) if self.density is not None else ())):
            finite_number(name, getattr(self, name))
        if self.density is not None and not 0.0 < float(self.density) <= 1.0:
            raise ConfigurationError(f"--density must be in (0, 1], got {self.density!r}")
        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("eval_batch_size", self.eval_batch_size)
        positive_int("lr_step_size", self.lr_step_size)
        positive_int("threads", self.threads, allow_none=True)
        positive_int("stop_after", self.stop_after, allow_none=True)
        for name in ("limit_train", "limit_test"):
            positive_int(name, getattr(self, name), allow_none=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigurationError(f"--seed must be an integer from 0 to 2**63 - 2, got {self.seed!r}")
        if not float(self.lr) > 0:
            raise ConfigurationError(f"--lr must be positive, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ConfigurationError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.optimizer == "sgd" and float(self.momentum) == 0.0:
            raise ConfigurationError("--nesterov needs --momentum > 0 (or pass --no-nesterov)")
        if float(self.weight_decay) < 0:
            raise ConfigurationError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigurationError(
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 < float(self.lr_gamma) <= 1.0:
            raise ConfigurationError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma!r}")
        if self.lr_schedule == "multistep":
            if not self.lr_milestones:
                raise ConfigurationError("--lr-schedule multistep needs --lr-milestones (epochs, e.g. 50,100)")
            if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.lr_milestones) \
                    or list(self.lr_milestones) != sorted(set(self.lr_milestones)):
                raise ConfigurationError(
                    f"--lr-milestones must be increasing positive epochs, got {self.lr_milestones!r}")
        if self.device not in DEVICES:
            raise ConfigurationError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        self._validate_plugins()
        if self.dense and self.options:
            raise ConfigurationError(
                f"--dense trains without an algorithm; drop the algorithm options {sorted(self.options)}")
        if self.run_name is not None and not is_plain_folder_name(self.run_name):
            raise ConfigurationError(f"--run-name must be a single folder name inside --runs-dir (without '/' or "
                                     f"'\\', not '.' or '..'), got {self.run_name!r}")
        for name in ("runs_dir", "data_dir"):
            path = getattr(self, name)
            if path is not None and "\0" in str(path):
                raise ConfigurationError(f"--{name.replace('_', '-')} must be a path without NUL characters, "
                                         f"got {path!r}")
        if self.stop_after is not None and self.stop_after > self.epochs:
            raise ConfigurationError(f"--stop-after {self.stop_after} is beyond --epochs {self.epochs}")
        return self

    def _validate_plugins(self) -> None:
        if not isinstance(self.plugins, list) or not all(isinstance(p, str) and p for p in self.plugins):
            raise ConfigurationError(f"--plugins must be a list of plugin names, got {self.plugins!r}")
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ConfigurationError(f"--option values must be a mapping of option name to value, got {self.options!r}")
        if not isinstance(self.plugin_options, dict):
            raise ConfigurationError("--plugin-option values must be a mapping of plugin name to its options, "
                                     f"got {self.plugin_options!r}")
        active = {p.casefold() for p in self.plugins}
        for name, options in self.plugin_options.items():
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise ConfigurationError(f"--plugin-option: the options of plugin {name!r} must be a mapping of "
                                         f"option name to value, got {options!r}")
            if str(name).casefold() not in active:
                raise ConfigurationError(f"--plugin-option {name}.{next(iter(options), 'KEY')}=...: plugin {name!r} "
                                         f"is not active in this run; add it with --plugins {name} "
                                         f"(active: {', '.join(self.plugins) or 'none'})")

    def plugin_specs(self) -> list[Any]:
        """The run's plugins as :class:`~sparsecore.Sparsifier` takes them: names, or ``(name, options)`` pairs."""
        options = {name.casefold(): values for name, values in self.plugin_options.items()}
        return [(name, dict(options[name.casefold()])) if name.casefold() in options else name
                for name in self.plugins]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what ``config.json`` holds)."""
        data = dataclasses.asdict(self)
        data["options"] = {k: v for k, v in self.options.items() if _is_json(v)}
        data["plugin_options"] = {name: {k: v for k, v in values.items() if _is_json(v)}
                                  for name, values in self.plugin_options.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise.

        Raises:
            ConfigurationError: a key that is not a config field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigurationError(f"unknown training config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**{k: _copy(v) for k, v in data.items()})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def is_plain_folder_name(name: object) -> bool:
    """Whether ``name`` names one folder inside another: no separators, not ``.``/``..``, no NUL (``""`` passes)."""
    return isinstance(name, str) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field (``weight_decay`` -> ``--weight-decay``, ``plots`` -> ``--no-plots``)."""
    special = {"plots": "--no-plots", "option_items": "--option", "options": "--option",
               "plugin_options": "--plugin-option", "plugin_option_items": "--plugin-option"}
    return special.get(field_name, "--" + field_name.replace("_", "-"))


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (list, dict)) else value


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_value(text: str) -> Any:
    """Parse an option value written on the command line.

    ``true``/``false`` (any case) give bools, ``none``/``null`` gives ``None``,
    integers and floats give numbers, JSON lists and objects are decoded, and
    anything else stays a string.

    Examples:
        >>> parse_value("0.5"), parse_value("10"), parse_value("True"), parse_value("[1, 2]"), parse_value("epoch")
        (0.5, 10, True, [1, 2], 'epoch')
    """
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.strip()[:1] in ("[", "{", '"'):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"option value {text!r} looks like JSON but does not parse: {exc}") from None
    return text


def parse_options(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse repeated ``key=value`` options into a dict (dashes in keys become underscores).

    Raises:
        ConfigurationError: an item without ``=`` or with an empty key, or a repeated key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigurationError(f"--option expects key=value, got {item!r}")
        if key in out:
            raise ConfigurationError(f"--option {key} is given twice")
        out[key] = parse_value(value)
    return out


def parse_plugin_options(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Parse repeated ``NAME.KEY=VALUE`` plugin options into ``{plugin name: {key: value}}``.

    ``NAME`` is the plugin's registered name (everything before the last ``.``
    of the part before ``=``); values parse as with :func:`parse_value`, and
    dashes in keys become underscores.

    Examples:
        >>> parse_plugin_options(["sparse-kernels-cuda.backend=csr", "tb.log-every=10"])
        {'sparse-kernels-cuda': {'backend': 'csr'}, 'tb': {'log_every': 10}}

    Raises:
        ConfigurationError: an item not of the form ``NAME.KEY=VALUE``, or a key given twice for one plugin.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.strip().rpartition(".")
        key = key.strip().replace("-", "_")
        if not sep or not dot or not name.strip() or not key:
            raise ConfigurationError(f"--plugin-option expects NAME.KEY=VALUE (e.g. sparse-kernels-cuda.backend=csr), "
                                     f"got {item!r}")
        options = out.setdefault(name.strip(), {})
        if key in options:
            raise ConfigurationError(f"--plugin-option {name.strip()}.{key} is given twice")
        options[key] = parse_value(value)
    return out
