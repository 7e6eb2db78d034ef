"""Run by test_distributed.py: two gloo ranks seeded differently train with sparsecore and compare masks.

Cases: ``set`` and ``momentum`` (growth from DDP-averaged momentum: the ranks agree
even before the engine's mask broadcast), and ``rank-local``, whose growth comes
from a generator seeded with the rank, so only the broadcast makes the masks
agree; it runs a second time with the broadcast switched off to show that.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sparsecore
from sparsecore import MaskingPolicy, distributed, hookimpl, selection


class MomentumGrowth:
    name = "momentum-growth"

    masking_policy = MaskingPolicy(mask_gradients=False, mask_optimizer_state=False, reset_grown_state=False)

    @hookimpl
    def select_grow(self, sparsifier, layer, n):
        return selection.largest(sparsifier.momentum(layer).abs(), ~layer.mask, n)


class RankLocalGrow:
    """Grows at random positions drawn from a generator seeded with the rank: rank-local choices."""

    name = "rank-local-grow"

    def __init__(self):
        self.gen = torch.Generator().manual_seed(1000 + dist.get_rank())
        self.chosen = []

    @hookimpl
    def select_grow(self, layer, n):
        out = selection.random_choice(~layer.mask, n, self.gen, layer.block)
        self.chosen.append(out)
        return out


def gathered_equal(masks):
    flat = torch.cat([m.reshape(-1).to(torch.uint8) for m in masks])
    out = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(out, flat)
    return all(torch.equal(out[0], o) for o in out[1:])


def train(ddp, opt, sp, update_by_hand):
    """Six steps on rank-local data; masks compared after init and after every step."""
    checks = [gathered_equal([l.mask for l in sp.layers.values()])]
    for step in range(6):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))  # different data per rank
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if update_by_hand and step % 2 == 1:
            sp.update_topology(0.3)
        checks.append(gathered_equal([l.mask for l in sp.layers.values()]))
    return checks


def run(algorithm):
    torch.manual_seed(100 + dist.get_rank())  # ranks deliberately seeded differently
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    algo = "set" if algorithm == "set" else MomentumGrowth()
    kwargs = {"update_every": 2, "total_steps": 10} if algorithm == "set" else {}
    plugins = [RankLocalGrow()] if algorithm == "rank-local" else []
    sp = sparsecore.Sparsifier(ddp, opt, algorithm=algo, density=0.2, plugins=plugins, **kwargs)
    checks = train(ddp, opt, sp, update_by_hand=algorithm != "set")
    result = {"checks": checks, "updates": len(sp.history),
              "weights_equal": gathered_equal([(p.detach() != 0) for p in model.parameters()])}
    if plugins:  # did the plugin's own choices really differ between the ranks?
        result["choices_equal"] = gathered_equal(plugins[0].chosen)
        result["grown"] = sum(u.grown for r in sp.history for u in r.layers.values())
    return result


def worker(rank, world, port, algorithm, result_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = run(algorithm)
    if algorithm == "rank-local":
        # the same run with the engine's mask broadcast switched off (the engine has no switch for it)
        original = distributed.broadcast_masks
        distributed.broadcast_masks = lambda masks, src=0: None
        try:
            result["without_broadcast"] = run(algorithm)
        finally:
            distributed.broadcast_masks = original
    if rank == 0:
        with open(result_path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()
    # gloo's worker threads can abort the interpreter's finalization (SIGABRT, "terminate called without an
    # active exception", pytorch PR #179291); the work is done and the group destroyed, so leave now
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    algorithm, result_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mp.spawn(worker, args=(2, port, algorithm, result_path), nprocs=2, join=True)
