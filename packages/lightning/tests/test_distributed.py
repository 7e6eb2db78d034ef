"""A real 2-process ``ddp_spawn`` fit on gloo (CPU): every rank ends with the same masks and weights."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist
from lightning_ddp_worker import digest, run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]


def test_ddp_spawn_keeps_masks_identical_on_every_rank(tmp_path):
    module = run_ranks(tmp_path)  # the worker processes are spawned from this one
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)
    # 2 epochs x 4 batches per rank; SET every 2 steps, never after the final step 8
    assert rank0["step"] == rank0["global_step"] == 8
    assert len(rank0["updates"]) == 3 and all(grown > 0 for grown in rank0["updates"])
    assert rank0["grads_seen"] and rank0["inactive_zero"]
    for key in ("masks", "weights", "seed", "step", "updates", "grads_seen", "inactive_zero"):
        assert rank0[key] == rank1[key], key
    # the weights Lightning copies back into this process are rank 0's sparse ones
    assert digest(module.state_dict().values()) == rank0["weights"]
