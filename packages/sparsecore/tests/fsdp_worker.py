"""Training runs for test_fsdp2.py: the same run on a plain model and on an FSDP2-sharded one (2 gloo ranks).

Every run builds the same model from a fixed seed, trains it on the same
batches (every rank sees the whole batch, so FSDP's averaged gradient equals
the unsharded one exactly) and records the whole masks and weights after
set-up and after every optimizer step, and the optimizer state at the end.
:func:`spawn` starts the ranks with ``torch.multiprocessing``; rank 0 saves
what they recorded with ``torch.save``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sparsecore
from sparsecore.distributed import full_tensor

WORLD = 2
STEPS = 8

#: name -> (algorithm, options, optimizer); updates after steps 2, 4 and 6 of 8 (never after the final step).
SCENARIOS: dict[str, tuple[str, dict[str, Any], str]] = {
    "static": ("static", {}, "sgd"),
    "set": ("set", {"update_every": 2, "prune_rate": 0.4}, "sgd"),
    "sparse-momentum": ("sparse-momentum", {"update_every": 2}, "sgd"),
    "sparse-momentum-global": ("sparse-momentum", {"update_every": 2, "prune": "global_magnitude"}, "sgd"),
    # redistribution statistics read the whole weight (DTensor shards would mix types or count one shard)
    "sparse-momentum-magnitude": ("sparse-momentum", {"update_every": 2, "redistribution": "magnitude"}, "sgd"),
    "sparse-momentum-nonzero": ("sparse-momentum", {"update_every": 2, "redistribution": "nonzero"}, "sgd"),
    "rigl": ("rigl", {"update_every": 2, "prune_rate": 0.5, "update_end": 1.0}, "adam"),
}


def make_model() -> nn.Module:
    """12 -> 9 -> 7 -> 1: odd row counts shard unevenly over 2 ranks, and rank 1 holds no row of the last layer."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 1))


def make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.01)
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 12, generator=gen), torch.randn(16, 1, generator=gen)


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` every Linear and the root on a CPU mesh over all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def snapshot(sparsifier: sparsecore.Sparsifier) -> dict[str, dict[str, torch.Tensor]]:
    """Whole masks and weights of every sparse layer (a collective on a sharded model)."""
    return {name: {"mask": full_tensor(layer.mask).clone(), "weight": full_tensor(layer.weight.detach()).clone()}
            for name, layer in sparsifier.layers.items()}


def build(scenario: str, sharded: bool) -> tuple[nn.Module, torch.optim.Optimizer, sparsecore.Sparsifier]:
    algorithm, options, optimizer = SCENARIOS[scenario]
    model = make_model()
    if sharded:
        shard(model)
    opt = make_optimizer(model, optimizer)
    sparsifier = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, distribution="uniform",
                                       total_steps=STEPS, seed=7, dense_first_layer=False, **options)
    return model, opt, sparsifier


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def run(scenario: str, sharded: bool) -> dict[str, Any]:
    """One scenario: snapshots after set-up and after every step, the update reports and the optimizer state."""
    model, opt, sparsifier = build(scenario, sharded)
    snapshots = [snapshot(sparsifier)]
    for step in range(STEPS):
        train(model, opt, range(step, step + 1))
        snapshots.append(snapshot(sparsifier))
    state = {name: {key: full_tensor(value).clone() for key, value in sparsifier.optimizer_state(layer).items()}
             for name, layer in sparsifier.layers.items()}
    placements = {name: [str(layer.mask.placements), str(layer.weight.placements)] if sharded else None
                  for name, layer in sparsifier.layers.items()}
    updates = [{name: (u.pruned, u.grown, u.nnz) for name, u in report.layers.items()}
               for report in sparsifier.history]
    return {"snapshots": snapshots, "optimizer_state": state, "updates": updates, "placements": placements,
            "nnz": {name: layer.nnz for name, layer in sparsifier.layers.items()}}


def run_all(out: Path) -> None:
    """Every scenario on the sharded model."""
    results = {scenario: run(scenario, sharded=True) for scenario in SCENARIOS}
    if dist.get_rank() == 0:
        torch.save(results, out)


def checkpoint_round_trip(out: Path) -> None:
    """Train 4 steps (one update), save model, optimizer and sparsifier with DCP, load them into a fresh run
    built with another seed, and train both 3 more steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model, opt, sparsifier = build("set", sharded=True)
    train(model, opt, range(4))
    mask_layouts = {name: (type(mask).__name__, str(getattr(mask, "placements", None)),
                           str(sparsifier.layers[name].weight.placements))
                    for name, mask in sparsifier.state_dict()["masks"].items()}
    checkpoint = out.parent / "dcp"
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt),
              "sparsifier": sparsifier.state_dict()}, checkpoint_id=checkpoint)
    saved = snapshot(sparsifier)

    torch.manual_seed(123)
    fresh = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 1))
    shard(fresh)
    fresh_opt = make_optimizer(fresh, "sgd")
    _, options = SCENARIOS["set"][:2]
    restored = sparsecore.Sparsifier(fresh, fresh_opt, algorithm="set", density=0.3, distribution="uniform",
                                     total_steps=STEPS, seed=99, dense_first_layer=False, **options)
    before_load = snapshot(restored)
    train(fresh, fresh_opt, range(1))  # optimizer state to load into
    state = {"model": get_model_state_dict(fresh), "optim": get_optimizer_state_dict(fresh, fresh_opt),
             "sparsifier": restored.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint)
    set_model_state_dict(fresh, state["model"])
    set_optimizer_state_dict(fresh, fresh_opt, state["optim"])
    restored.load_state_dict(state["sparsifier"])
    loaded = {"snapshot": snapshot(restored), "step": restored.step,
              "generator": torch.equal(restored.generator.get_state(), sparsifier.generator.get_state())}

    train(model, opt, range(4, 7))
    train(fresh, fresh_opt, range(4, 7))
    result = {"saved": saved, "mask_layouts": mask_layouts, "before_load": before_load, "loaded": loaded,
              "continued": snapshot(sparsifier), "restored_continued": snapshot(restored),
              "history": [report.step for report in sparsifier.history],
              "restored_history": [report.step for report in restored.history]}

    # a state with whole (plain) masks, as an unsharded run saves it, loads into the sharded run
    whole = dict(sparsifier.state_dict())
    whole["masks"] = {name: full_tensor(mask) for name, mask in whole["masks"].items()}
    restored.load_state_dict(whole)
    result["from_whole"] = {name: (type(layer.mask).__name__, str(layer.mask.placements),
                                   torch.equal(full_tensor(layer.mask), whole["masks"][name]))
                            for name, layer in restored.layers.items()}
    # set_masks takes whole masks and shards them
    first = restored.layers[next(iter(restored.layers))]
    before = first.nnz
    report = restored.set_masks({first.name: torch.ones(first.shape, dtype=torch.bool)})
    result["set_masks"] = {"before": before, "grown": report.layers[first.name].grown, "nnz": first.nnz,
                           "capacity": first.capacity, "layout": (type(first.mask).__name__, str(first.mask.placements))}
    if dist.get_rank() == 0:
        torch.save(result, out)


TASKS: dict[str, Callable[[Path], None]] = {"train": run_all, "checkpoint": checkpoint_round_trip}


def _rank_main(rank: int, task: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        TASKS[task](Path(out))
    finally:
        dist.destroy_process_group()
    # gloo's worker threads can abort the interpreter's finalization (SIGABRT, "terminate called without an
    # active exception", pytorch PR #179291); the work is done and the group destroyed, so leave now
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(task: str, out: Path) -> dict[str, Any]:
    """Run ``task`` on ``WORLD`` gloo ranks and return what rank 0 saved."""
    mp.spawn(_rank_main, args=(task, str(out), free_port()), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)
