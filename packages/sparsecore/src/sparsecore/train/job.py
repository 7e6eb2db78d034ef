"""The training job: data, model, optimizer, engine, loop, evaluation, checkpoints and the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecore.data.text import LANGUAGE_MODEL
from sparsecore.errors import CheckpointError, ConfigurationError, SparsecoreError
from sparsecore.layers import DEFAULT_LAYER_TYPES
from sparsecore.plugins import registry
from sparsecore.sparsifier import Sparsifier
from sparsecore.train import rundir
from sparsecore.train.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from sparsecore.train.config import DEFAULT_ALGORITHM, FALLBACK_ALGORITHM, TrainConfig, flag_name
from sparsecore.train.errors import (
    RunFolderError,
    TrainingDivergedError,
    TrainingInterrupted,
    kept_checkpoint,
    os_reason,
)

#: Config fields that may change when a run is resumed; everything else comes from the checkpoint.
RESUME_OVERRIDABLE = ("epochs", "stop_after", "device", "threads", "channels_last", "quiet", "plots")


@dataclass
class RunResult:
    """What a finished (or stopped) run leaves behind.

    Attributes:
        run_dir: the run folder.
        config: the resolved configuration (algorithm name filled in).
        metrics: one record per completed epoch (the lines of ``metrics.jsonl``).
        test_accuracy: final test accuracy in [0, 1] (next-byte accuracy for a language model).
        test_loss: final mean test loss (per target: per byte for a language model).
        density: final density of the sparse layers (1.0 for ``dense``).
        train_flops_ratio: sparse over dense training FLOPs of the sparse layers, per step with the final masks.
        layers: per-layer rows: name, shape, density, nnz, numel, train FLOPs ratio.
        wall_seconds: wall time of this call (data loading to summary).
        train_seconds: time spent in training steps over all epochs of the run.
        epochs_done: epochs completed so far (less than ``config.epochs`` after ``stop_after``).
        completed: whether the run reached ``config.epochs``.
        notices: one-line notices printed during the run (e.g. the algorithm fallback).
        model: the trained model.
        sparsifier: the engine (``None`` for ``dense``).
        test_bits_per_byte: final test loss in bits (``test_loss / ln 2``) for a
            language-model dataset, else ``None``.
        run_train_flops_ratio: sparse over dense training FLOPs of the sparse layers summed over every step
            of the run (:meth:`Sparsifier.run_flops`); 1.0 for ``dense``, ``None`` when unknown.
        forward_flops_ratio: sparse over dense forward (inference) FLOPs of the sparse layers with the final
            masks; 1.0 for ``dense``, ``None`` before a forward pass.
    """

    run_dir: Path
    config: TrainConfig
    metrics: list[dict[str, Any]]
    test_accuracy: float
    test_loss: float
    density: float
    train_flops_ratio: float | None
    layers: list[dict[str, Any]]
    wall_seconds: float
    train_seconds: float
    epochs_done: int
    completed: bool
    notices: list[str] = field(default_factory=list)
    model: nn.Module | None = None
    sparsifier: Sparsifier | None = None
    test_bits_per_byte: float | None = None
    run_train_flops_ratio: float | None = None
    forward_flops_ratio: float | None = None

    @property
    def test_error(self) -> float:
        """``1 - test_accuracy``."""
        return 1.0 - self.test_accuracy


class TrainBatches:
    """Re-iterable shuffled training batches: the ``data`` the harness hands every ``Sparsifier`` (SNIP scores on it).

    It has its own seeded generator, so handing it to a plugin does not change
    the training data order.

    Args:
        split: the training split.
        batch_size: samples per batch.
        seed: seed of the shuffle.
    """

    def __init__(self, split: Any, batch_size: int, seed: int) -> None:
        self.split = split
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.split.batches(self.batch_size, shuffle=True, generator=self.generator)

    def __len__(self) -> int:
        return self.split.num_batches(self.batch_size)


# ----------------------------------------------------------------------
# resolution of names
# ----------------------------------------------------------------------
def resolve_algorithm(config: TrainConfig) -> tuple[str, list[str]]:
    """The algorithm a config trains with, and the notices that choice produced.

    ``algorithm=None`` means :data:`DEFAULT_ALGORITHM`, or :data:`FALLBACK_ALGORITHM`
    with a notice when that is not installed. ``dense`` gives ``"dense"``.

    Raises:
        UnknownAlgorithmError: an explicitly named algorithm nobody registered.
    """
    if config.dense:
        if config.plugins:
            return "dense", [f"note: a --dense run trains without the engine, so the plugins {config.plugins} do not "
                             "run (train sparse to use them)"]
        return "dense", []
    if config.algorithm is None:
        registry.load()
        if DEFAULT_ALGORITHM in registry.algorithms:
            return DEFAULT_ALGORITHM, []
        notice = (f"note: the default algorithm '{DEFAULT_ALGORITHM}' is not installed, so this run uses the core "
                  f"'{FALLBACK_ALGORITHM}' algorithm instead; install it with `pip install {DEFAULT_ALGORITHM}` "
                  f"(in the monorepo: `pip install -e packages/{DEFAULT_ALGORITHM}`)")
        return FALLBACK_ALGORITHM, [notice]
    registry.algorithm(config.algorithm)  # raises with the list of available names
    return config.algorithm, []


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) as a device.

    Raises:
        ConfigurationError: ``cuda`` without a CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda, but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(name)


def _load_data(config: TrainConfig, device: torch.device, input_shape: tuple[int, ...], num_classes: int):
    from sparsecore import data

    if config.dataset == "random":
        return data.random_dataset(input_shape, num_classes, n_train=config.limit_train or 1024,
                                   n_test=config.limit_test or 256, seed=config.seed, device=device)
    return data.load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                             limit_train=config.limit_train, limit_test=config.limit_test, device=device)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer a config names, over all of the model's parameters."""
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=bool(config.nesterov and config.momentum > 0), weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule, stepped once per optimizer step (``None`` for ``"none"``)."""
    sched = torch.optim.lr_scheduler
    if config.lr_schedule == "step":
        return sched.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)
    if config.lr_schedule == "multistep":
        return sched.MultiStepLR(optimizer, [m * steps_per_epoch for m in config.lr_milestones], gamma=config.lr_gamma)
    if config.lr_schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * config.epochs)
    return None


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules of the engine's default layer types with a weight, in model order."""
    types = tuple(DEFAULT_LAYER_TYPES)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, types) and isinstance(getattr(m, "weight", None), torch.Tensor)}


def layer_densities(model: nn.Module, sparsifier: Sparsifier | None) -> dict[str, float]:
    """Density of each sparse layer (each prunable layer's nonzero fraction for dense runs)."""
    if sparsifier is not None:
        return {name: layer.density for name, layer in sparsifier.layers.items()}
    weights = {n: _weight(m) for n, m in prunable_layers(model).items()}
    return {n: float(torch.count_nonzero(w)) / w.numel() for n, w in weights.items()}


def _weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, a tensor for every module :func:`prunable_layers` returns (``nn.Module`` types it loosely)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def layer_rows(model: nn.Module, sparsifier: Sparsifier | None) -> tuple[list[dict[str, Any]], float, float | None]:
    """Per-layer rows, overall density and training-FLOPs ratio for the summary."""
    if sparsifier is not None:
        report = sparsifier.report()
        rows: list[dict[str, Any]] = []
        for s in report.layers:
            ratio = (None if s.forward_flops is None or s.backward_flops is None or s.dense_forward_flops is None
                     else (s.forward_flops + s.backward_flops) / (3 * s.dense_forward_flops))
            rows.append({"name": s.name, "shape": list(s.shape), "density": s.density, "nnz": s.nnz,
                         "numel": s.numel, "train_flops_ratio": ratio})
        return rows, report.density, report.train_flops_ratio
    rows = []
    for name, module in prunable_layers(model).items():
        weight = _weight(module)
        nnz, numel = int(torch.count_nonzero(weight)), weight.numel()
        rows.append({"name": name, "shape": list(weight.shape), "density": nnz / numel, "nnz": nnz,
                     "numel": numel, "train_flops_ratio": 1.0})
    nnz, numel = sum(r["nnz"] for r in rows), sum(r["numel"] for r in rows)
    return rows, (nnz / numel if numel else 1.0), 1.0


# ----------------------------------------------------------------------
# loop pieces
# ----------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, split: Any, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on a split (eval mode, restored afterwards).

    Both are per target: per sample for classification, per position for
    sequence targets (logits ``(N, C, T)``, targets ``(N, T)``).
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = targets = 0
    for x, y in split.batches(batch_size, shuffle=False):
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").double().cpu()
        correct += int((out.argmax(1) == y).sum())
        targets += y.numel()
    model.train(was_training)
    n = max(targets, 1)
    return float(loss_sum) / n, correct / n


def _progress(total: int, desc: str, quiet: bool):
    if quiet:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the train extra
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True, file=sys.stderr)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, split: Any, batch_size: int,
                generator: torch.Generator, augment: bool = False, sparsifier: Sparsifier | None = None,
                bar: Any = None, refresh_every: int = 25) -> tuple[float, float]:
    """One epoch over ``split``; returns mean training loss and accuracy (per target, as :func:`evaluate`).

    The running loss is checked every ``refresh_every`` steps and at the end:
    a non-finite one stops the epoch.

    Args:
        model: the model, put in training mode.
        optimizer: its optimizer (the engine's hooks, if any, are on it).
        scheduler: a per-step LR scheduler or ``None``.
        split: the training split.
        batch_size: samples per batch.
        generator: the data-order generator (advanced by the epoch's shuffle).
        augment: apply the split's training augmentation.
        sparsifier: the engine, for the density shown in the progress bar.
        bar: a tqdm bar to advance, or ``None``.
        refresh_every: steps between updates of the bar's loss/accuracy/density and checks of the loss.

    Raises:
        TrainingDivergedError: the training loss became non-finite (``inf`` or ``nan``).
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    correct = torch.zeros((), dtype=torch.int64, device=loss_sum.device)
    seen = steps = 0
    for i, (x, y) in enumerate(split.batches(batch_size, shuffle=True, generator=generator, augment=augment or None)):
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * y.numel()
            correct += (out.argmax(1) == y).sum()
        seen += y.numel()
        steps = i + 1
        if i % refresh_every == 0:
            _check_finite_loss(loss_sum, steps)
        if bar is not None:
            bar.update(1)
            if i % refresh_every == 0:
                density = (sparsifier.nnz / sum(layer.capacity for layer in sparsifier.layers.values())
                           if sparsifier else 1.0)
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.2%}",
                                density=f"{density:.4f}", refresh=False)
    _check_finite_loss(loss_sum, steps)
    seen = max(seen, 1)
    return float(loss_sum) / seen, int(correct) / seen


def _check_finite_loss(loss_sum: torch.Tensor, steps: int) -> None:
    total = float(loss_sum)
    if not math.isfinite(total):
        raise TrainingDivergedError(f"the training loss became {total} within the first {steps} steps of the epoch")


def _rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------
def run_training(config: TrainConfig | None = None, **changes: Any) -> RunResult:
    """Train a reference model as ``config`` says and leave a run folder.

    The run folder ``<runs_dir>/<timestamp>-<algorithm>-<model>/`` receives
    ``config.json``, ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
    (rewritten atomically after every epoch, with its sha256 in ``checkpoint.pt.sha256``;
    resumable with :func:`resume_training`), ``summary.md`` and the PNG plots.

    Example:
        ```python
        from sparsecore.train import TrainConfig, run_training
        result = run_training(TrainConfig(epochs=1, limit_train=2000, limit_test=1000))
        print(result.test_accuracy, result.run_dir)
        ```

    Args:
        config: the run's configuration (default: the bare ``sparsecore train``).
        **changes: fields to change on ``config`` (``run_training(epochs=1)``).

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigurationError: bad configuration (names the flag), unknown algorithm, model or dataset.
        DatasetUnavailableError: the dataset is not on this machine (the message says how to get it).
        RunFolderError: the run folder cannot be created or written (e.g. a full disk); the message says
            which checkpoint the run folder keeps.
        TrainingDivergedError: the loss or the weights became non-finite; the epoch is not recorded.
        TrainingInterrupted: Ctrl-C; says what the run folder keeps (a ``KeyboardInterrupt``).
    """
    config = (config or TrainConfig()).replace(**changes) if changes else (config or TrainConfig())
    return _run(config.validate(), checkpoint=None, run_dir=None)


def resume_training(path: str | Path, **overrides: Any) -> RunResult:
    """Continue a run from its checkpoint, exactly where it stopped.

    On the CPU the continued run is bit-for-bit the run that was never
    interrupted (same weights, masks and metrics), as long as the thread count
    is the same. Changing ``epochs`` extends (or shortens) the run; the LR and
    sparsity schedules then span the new length from the resumed step on.
    A run that checkpointed its last epoch but stopped before writing
    ``summary.md`` (and the plots) gets them written, without training.

    Args:
        path: the run folder, or its ``checkpoint.pt``.
        **overrides: fields in :data:`RESUME_OVERRIDABLE` to change.

    Raises:
        CheckpointError: missing, empty, truncated, corrupted (its sha256 differs from the recorded one) or
            foreign checkpoint; one written by a newer sparsecore; the checkpoint of another run than the one
            the folder's ``config.json`` describes (another algorithm, density, model, ...).
        ConfigurationError: an override that cannot change on resume, or nothing left to train (the run
            is complete, summary included).
        RunFolderError, TrainingDivergedError, TrainingInterrupted: as for :func:`run_training`.
    """
    bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if bad:
        raise ConfigurationError(f"{', '.join(map(flag_name, bad))} cannot change when resuming: a resumed run keeps "
                                 f"its configuration (changeable: {', '.join(map(flag_name, RESUME_OVERRIDABLE))})")
    loaded = read_checkpoint(path)
    ckpt, run_dir = loaded.state, loaded.run_dir
    config = _checkpoint_config(ckpt["config"], run_dir)
    _check_same_run(ckpt["config"], run_dir)
    # a stop_after of the interrupted invocation does not carry over; one given now does
    config = config.replace(**{"stop_after": None,
                               **{k: v for k, v in overrides.items() if v is not None or k == "stop_after"}})
    config.validate()
    say = rundir.Printer(config.quiet)
    for notice in loaded.notices:
        say.notice(notice)
    if ckpt["epoch"] == config.epochs and not (run_dir / rundir.SUMMARY_NAME).is_file():
        say.line(f"the run in {run_dir} trained all {config.epochs} epochs but stopped before writing its summary; "
                 f"writing it now")
        return _run(config, checkpoint=ckpt, run_dir=run_dir)
    if ckpt["epoch"] >= config.epochs:
        raise ConfigurationError(f"the run in {run_dir} has already trained {ckpt['epoch']}/{config.epochs} epochs; "
                                 f"pass a larger --epochs to train further")
    return _run(config, checkpoint=ckpt, run_dir=run_dir)


def _checkpoint_config(stored: dict[str, Any], run_dir: Path) -> TrainConfig:
    """The configuration a checkpoint records, checked.

    Raises:
        CheckpointError: it has keys this version does not know (a newer sparsecore wrote it), or values it refuses.
    """
    unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise CheckpointError(f"the checkpoint in {run_dir} was written by a newer sparsecore: its config has "
                              f"{', '.join(map(repr, unknown))}, which this version does not know; upgrade "
                              f"sparsecore to resume it")
    try:
        return TrainConfig.from_dict(stored).validate()
    except ConfigurationError as exc:
        raise CheckpointError(f"the checkpoint in {run_dir} holds a configuration this sparsecore refuses: "
                              f"{exc}") from None


def _check_same_run(stored: dict[str, Any], run_dir: Path) -> None:
    """Refuse a checkpoint whose config differs from the folder's ``config.json`` (one copied from another run).

    Fields a resume may change (:data:`RESUME_OVERRIDABLE`) are not compared; a folder without a readable
    ``config.json`` passes (resuming writes one).

    Raises:
        CheckpointError: names the first differing fields, as the checkpoint and ``config.json`` hold them.
    """
    try:
        recorded = json.loads((run_dir / rundir.CONFIG_NAME).read_text())["config"]
        names = [f.name for f in dataclasses.fields(TrainConfig) if f.name in recorded and f.name in stored]
    except (OSError, ValueError, KeyError, TypeError):
        return
    differing = [name for name in names if name not in RESUME_OVERRIDABLE
                 and json.dumps(stored[name], sort_keys=True) != json.dumps(recorded[name], sort_keys=True)]
    if differing:
        what = ", ".join(f"{name} {stored[name]!r} (config.json: {recorded[name]!r})" for name in differing[:3])
        raise CheckpointError(f"the checkpoint in {run_dir} is not one of the run its {rundir.CONFIG_NAME} describes: "
                              f"its {what}{', ...' if len(differing) > 3 else ''}; resume the run folder it came from")


def _run(config: TrainConfig, checkpoint: dict[str, Any] | None, run_dir: Path | None) -> RunResult:
    from sparsecore.models import model_info

    started = time.perf_counter()
    say = rundir.Printer(config.quiet)
    algorithm, notices = resolve_algorithm(config)
    for notice in notices:
        say.notice(notice)
    info = model_info(config.model)  # validates the name before any heavy work
    device = resolve_device(config.device)
    if checkpoint is None:
        rundir.check_runs_dir(config.runs_dir)
    job = None
    try:
        with _torch_threads(config.threads):
            printed = len(notices)
            job = _build_job(config, algorithm, notices, info, device)
            for notice in notices[printed:]:  # what building the job found to say
                say.notice(notice)
            if checkpoint is not None:
                _restore(job, checkpoint, run_dir, say)
            else:
                job.run_dir = rundir.create_run_dir(config.runs_dir, config.run_name, _run_label(job), config.model)
            _open_run_folder(job, say)
            if job.sparsifier is not None:  # observer plugins put their files in the run folder
                job.sparsifier.manager.hook.on_run_start(sparsifier=job.sparsifier, run_dir=job.folder,
                                                         start_epoch=job.start_epoch)
            for epoch in range(job.start_epoch, _end_epoch(config, job.start_epoch)):
                _train_and_checkpoint_epoch(job, epoch, say)
            return _finish(job, started, say)
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise _interruption(config, job, run_dir, checkpoint) from None


def _interruption(config: TrainConfig, job: _Job | None, run_dir: Path | None,
                  checkpoint: dict[str, Any] | None) -> TrainingInterrupted:
    """What Ctrl-C leaves: the run folder (if created yet) and the epoch of the checkpoint it keeps."""
    if job is not None and job.run_dir is not None:
        return TrainingInterrupted(job.run_dir, job.checkpoint_epoch, config.epochs)
    return TrainingInterrupted(run_dir, int(checkpoint["epoch"]) if checkpoint else 0, config.epochs)


@dataclass
class _Job:
    """Everything one invocation of the training job works with."""

    config: TrainConfig
    resolved: TrainConfig  # the config as recorded: algorithm and density filled in
    algorithm: str
    notices: list[str]
    device: torch.device
    dataset: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sparsifier: Sparsifier | None
    steps_per_epoch: int
    data_generator: torch.Generator
    run_dir: Path | None = None
    start_epoch: int = 0
    checkpoint_epoch: int = 0  # epochs in the run folder's checkpoint (0: none yet)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The run folder, once created or restored (before the first epoch trains)."""
        if self.run_dir is None:
            raise RuntimeError("the run folder is not created yet")
        return self.run_dir


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (unchanged for ``None``), restoring the count afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _run_label(job: _Job) -> str:
    """``dense`` or the algorithm's name, as run folders and messages show it."""
    return "dense" if job.config.dense else job.algorithm


def _end_epoch(config: TrainConfig, start_epoch: int) -> int:
    """The epoch this invocation stops after: ``epochs``, or earlier with ``stop_after``."""
    return config.epochs if config.stop_after is None else min(config.epochs, start_epoch + config.stop_after)


def _load_matching_data(config: TrainConfig, device: torch.device, info: Any) -> Any:
    """The dataset, checked to fit the model's task and input shape."""
    if config.dataset == "random" and info.task != "classification":
        raise ConfigurationError(f"model {config.model!r} is a {info.task} model, and the random dataset holds "
                                 f"classification samples; pick a {info.task} dataset (e.g. {info.default_dataset})")
    dataset = _load_data(config, device, info.input_shape, info.num_classes)
    if dataset.task != info.task:
        raise ConfigurationError(f"model {config.model!r} is a {info.task} model, but dataset {config.dataset!r} "
                                 f"is a {dataset.task} dataset; pick a matching --model/--dataset pair")
    if tuple(dataset.input_shape) != tuple(info.input_shape):
        raise ConfigurationError(f"model {config.model!r} takes inputs of shape {info.input_shape}, but dataset "
                                 f"{config.dataset!r} has {tuple(dataset.input_shape)}; pick a matching "
                                 f"--model/--dataset pair")
    return dataset


def _build_job(config: TrainConfig, algorithm: str, notices: list[str], info: Any, device: torch.device) -> _Job:
    """Data, seeded model, optimizer, schedule and engine, as a fresh run starts them."""
    from sparsecore.models import create_model

    dataset = _load_matching_data(config, device, info)
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=dataset.num_classes).to(device)
    if config.channels_last:
        _to_channels_last(model, config.model, notices)
    optimizer = make_optimizer(config, model)
    steps_per_epoch = dataset.train.num_batches(config.batch_size)
    if steps_per_epoch == 0:
        raise ConfigurationError(f"dataset {config.dataset!r} has no training samples")
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    sparsifier = None
    if not config.dense:
        sparsifier = Sparsifier(model, optimizer, algorithm=algorithm, density=config.density,
                                distribution=config.distribution, total_steps=steps_per_epoch * config.epochs,
                                plugins=config.plugin_specs(), seed=config.seed,
                                data=TrainBatches(dataset.train, config.batch_size, config.seed + 1),
                                algorithm_options=dict(config.options))
    resolved = config.replace(algorithm=None if config.dense else algorithm)
    if resolved.density is None:  # the algorithm chose it (or the engine's default)
        resolved = resolved.replace(density=sparsifier.density if sparsifier is not None else 1.0)
    return _Job(config=config, resolved=resolved, algorithm=algorithm, notices=notices, device=device,
                dataset=dataset, model=model, optimizer=optimizer, scheduler=scheduler, sparsifier=sparsifier,
                steps_per_epoch=steps_per_epoch, data_generator=torch.Generator().manual_seed(config.seed))


def _to_channels_last(model: nn.Module, name: str, notices: list[str]) -> None:
    """Put the model's 4-D parameters in the channels-last format (before the optimizer and engine see them)."""
    if not any(p.dim() == 4 for p in model.parameters()):
        notices.append(f"note: --channels-last changes nothing for {name}: it has no 4-D (convolution) weights")
        return
    model.to(memory_format=torch.channels_last)


def _restore(job: _Job, checkpoint: dict[str, Any], run_dir: Path | None, say: rundir.Printer) -> None:
    """Put the checkpoint's weights, optimizer, schedules, engine and RNG state into the job.

    Raises:
        CheckpointError: the checkpoint's state does not fit the model, optimizer or engine its config builds.
    """
    config = job.config
    try:
        job.model.load_state_dict(checkpoint["model"])
        job.optimizer.load_state_dict(checkpoint["optimizer"])
        if job.scheduler is not None and checkpoint.get("scheduler") is not None:
            job.scheduler.load_state_dict(checkpoint["scheduler"])
        if job.sparsifier is not None:
            job.sparsifier.load_state_dict(checkpoint["sparsifier"])
        _set_rng_state(checkpoint["rng"], job.data_generator)
    except CheckpointError as exc:  # the engine's own check: another algorithm, density, layers, state format
        raise CheckpointError(f"the checkpoint in {run_dir} does not fit the run its config describes: "
                              f"{exc}") from None
    except SparsecoreError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the checkpoint in {run_dir} does not fit the run its config describes: "
                              f"{reason}") from None
    job.run_dir = run_dir
    job.start_epoch = job.checkpoint_epoch = int(checkpoint["epoch"])
    if config.epochs != checkpoint["config"]["epochs"]:
        say.notice(f"note: the run was planned for {checkpoint['config']['epochs']} epochs and now trains "
                   f"{config.epochs}; its schedules span the new length from here on")
    job.metrics = rundir.read_metrics(job.folder, warn=say.notice)[:job.start_epoch]
    if len(job.metrics) < job.start_epoch:
        say.notice(f"note: {job.folder / rundir.METRICS_NAME} has records of {len(job.metrics)} of the "
                   f"{job.start_epoch} epochs in the checkpoint; the summary and plots show only those")
    say.line(f"resuming {run_dir} after epoch {job.start_epoch}/{config.epochs}")


def _open_run_folder(job: _Job, say: rundir.Printer) -> None:
    """(Re)write ``config.json`` and ``metrics.jsonl`` up to the start epoch; print where the run goes."""
    assert job.run_dir is not None
    config, dataset = job.config, job.dataset
    rundir.write_config(job.run_dir, job.resolved, algorithm=job.algorithm, dataset=dataset, model=job.model,
                        notices=job.notices, device=job.device)
    rundir.write_metrics(job.run_dir, job.metrics)
    say.line(f"run folder {job.run_dir}  ({_run_label(job)}, {config.model} on "
             f"{dataset.name} [{dataset.source}], {len(dataset.train)} train / {len(dataset.test)} test, "
             f"{job.device}, {torch.get_num_threads()} threads)")


def _epoch_record(job: _Job, epoch: int, train_loss: float, train_acc: float, epoch_seconds: float,
                  algorithm_metrics: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the model and return the epoch's ``metrics.jsonl`` record (before the engine's epoch end)."""
    sparsifier = job.sparsifier
    tick = time.perf_counter()
    test_loss, test_acc = evaluate(job.model, job.dataset.test, job.config.eval_batch_size)
    eval_seconds = time.perf_counter() - tick
    densities = layer_densities(job.model, sparsifier)
    overall = (sparsifier.nnz / sum(layer.capacity for layer in sparsifier.layers.values())) if sparsifier else 1.0
    record = {"epoch": epoch + 1, "step": (epoch + 1) * job.steps_per_epoch, "train_loss": train_loss,
              "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc, "density": overall,
              "layer_densities": densities, "lr": job.optimizer.param_groups[0]["lr"],
              "epoch_seconds": epoch_seconds, "eval_seconds": eval_seconds,
              "run_train_flops_ratio": _run_flops_ratio(job)}
    if job.dataset.task == LANGUAGE_MODEL:  # byte-level: the mean loss in bits is bits per byte
        record["train_bits_per_byte"] = train_loss / math.log(2)
        record["test_bits_per_byte"] = test_loss / math.log(2)
    for key, value in algorithm_metrics.items():  # the algorithm's own values (DSD's phase); never overwrite ours
        record.setdefault(key, value)
    return record


def _run_flops_ratio(job: _Job) -> float | None:
    """Training FLOPs of the run's steps so far over dense (1.0 for a dense run, ``None`` when unknown)."""
    if job.sparsifier is None:
        return 1.0
    flops = job.sparsifier.run_flops()
    return None if flops is None else flops.ratio


def _checkpoint_state(job: _Job, epochs_done: int) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds after ``epochs_done`` epochs."""
    return {"format": CHECKPOINT_FORMAT, "epoch": epochs_done, "config": job.resolved.to_dict(),
            "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
            "scheduler": None if job.scheduler is None else job.scheduler.state_dict(),
            "sparsifier": None if job.sparsifier is None else job.sparsifier.state_dict(),
            "rng": _rng_state(job.data_generator)}


def _train_and_checkpoint_epoch(job: _Job, epoch: int, say: rundir.Printer) -> None:
    """Train epoch ``epoch`` (0-based), evaluate, end the engine's epoch, record the metrics and checkpoint."""
    train_loss, train_acc, epoch_seconds = _train_timed(job, epoch)
    # the phase of the model that is evaluated (a step-scheduled phase change at the epoch's last step
    # has already happened), so that the phase, the density and the test metrics describe one model
    algorithm_metrics = job.sparsifier.algorithm_metrics() if job.sparsifier is not None else {}
    record = _epoch_record(job, epoch, train_loss, train_acc, epoch_seconds, algorithm_metrics)
    problem = _non_finite_state(job.model, record["test_loss"])
    if problem is not None:
        raise _diverged(job, epoch, problem)
    if job.sparsifier is not None:
        tick = time.perf_counter()
        job.sparsifier.epoch_end(epoch)
        record["update_seconds"] = time.perf_counter() - tick
    job.metrics.append(record)
    _record_and_checkpoint(job, record)
    if job.sparsifier is not None:  # loggers record what metrics.jsonl holds
        job.sparsifier.manager.hook.on_epoch_metrics(sparsifier=job.sparsifier, epoch=epoch, metrics=dict(record))
    say.line(rundir.epoch_line(record, job.config.epochs))


def _train_timed(job: _Job, epoch: int) -> tuple[float, float, float]:
    """One epoch's training steps under a progress bar: mean loss, accuracy and seconds.

    Raises:
        TrainingDivergedError: the training loss became non-finite (the message names the epoch and what is kept).
    """
    config = job.config
    bar = _progress(job.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", config.quiet)
    tick = time.perf_counter()
    try:
        train_loss, train_acc = train_epoch(job.model, job.optimizer, job.scheduler, job.dataset.train,
                                            config.batch_size, job.data_generator, config.augment, job.sparsifier, bar)
    except TrainingDivergedError as exc:
        raise _diverged(job, epoch, str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    return train_loss, train_acc, time.perf_counter() - tick


def _record_and_checkpoint(job: _Job, record: dict[str, Any]) -> None:
    """Append the epoch's record to ``metrics.jsonl`` and save the checkpoint of that epoch.

    Raises:
        RunFolderError: a write failed; the message says which checkpoint the run folder keeps.
    """
    try:
        rundir.discard_summary(job.folder)  # from here on it would describe an older checkpoint
        rundir.append_metrics(job.folder, record)
        save_checkpoint(job.folder, _checkpoint_state(job, record["epoch"]))
    except RunFolderError as exc:
        kept = kept_checkpoint(job.folder, job.checkpoint_epoch, job.config.epochs)
        raise RunFolderError(f"{exc}; {kept}") from exc
    job.checkpoint_epoch = record["epoch"]


def _write_plots(job: _Job, say: rundir.Printer) -> None:
    """The PNG plots of the metrics so far (a notice instead when matplotlib is missing)."""
    from sparsecore.train import plots

    try:
        plots.write_plots(job.folder, job.metrics, dense=job.config.dense,
                          title=rundir.run_title(job.resolved, job.algorithm, job.dataset.name))
    except ImportError as exc:  # matplotlib comes with the train extra; the summary does not need it
        say.notice(f"note: no plots, {exc.name or 'matplotlib'} is not installed (pip install matplotlib)")
    except OSError as exc:
        raise RunFolderError(f"cannot write the plots in {job.run_dir}: {os_reason(exc)}; "
                             f"{kept_checkpoint(job.folder, job.checkpoint_epoch, job.config.epochs)}") from exc


def _non_finite_state(model: nn.Module, test_loss: float) -> str | None:
    """What is not finite after an epoch: the first weight tensor with ``inf``/``nan``, the test loss, or ``None``."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return f"the weights of {name} are no longer finite"
    return None if math.isfinite(test_loss) else f"the test loss is {test_loss}"


def _diverged(job: _Job, epoch: int, problem: str) -> TrainingDivergedError:
    """The error that stops a run whose epoch ``epoch`` (0-based) diverged; that epoch is not recorded."""
    config = job.config
    kept = (f"{job.run_dir} keeps the checkpoint of epoch {job.checkpoint_epoch}/{config.epochs}"
            if job.checkpoint_epoch else "no checkpoint was written")
    return TrainingDivergedError(f"training diverged in epoch {epoch + 1}/{config.epochs}: {problem}; {kept} "
                                 f"(a lower --lr usually helps)",
                                 epoch=epoch + 1, checkpoint_epoch=job.checkpoint_epoch)


def _finish(job: _Job, started: float, say: rundir.Printer) -> RunResult:
    """The run's result; writes the plots and ``summary.md`` and prints the summary."""
    config, metrics = job.config, job.metrics
    rows, density, flops_ratio = layer_rows(job.model, job.sparsifier)
    last = metrics[-1] if metrics else {}
    result = RunResult(
        run_dir=job.folder, config=job.resolved, metrics=metrics, test_accuracy=last.get("test_acc", math.nan),
        test_loss=last.get("test_loss", math.nan), density=density, train_flops_ratio=flops_ratio, layers=rows,
        wall_seconds=0.0, train_seconds=sum(m["epoch_seconds"] for m in metrics), epochs_done=len(metrics),
        completed=len(metrics) >= config.epochs, notices=job.notices, model=job.model, sparsifier=job.sparsifier,
        test_bits_per_byte=last.get("test_bits_per_byte"), run_train_flops_ratio=_run_flops_ratio(job),
        forward_flops_ratio=1.0 if job.sparsifier is None else job.sparsifier.report().forward_flops_ratio)
    if config.plots and metrics:
        _write_plots(job, say)
    result.wall_seconds = time.perf_counter() - started
    rundir.write_summary(job.folder, result, job.algorithm)
    say.summary(result, job.algorithm)
    return result
