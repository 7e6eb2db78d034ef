"""Real 2-process fits on gloo (CPU), ``ddp_spawn`` and ``ddp``: every rank ends with the same masks and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from lightning_ddp_worker import digest, run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with the gloo backend is not available")]

WORKER = Path(__file__).with_name("lightning_ddp_worker.py")
#: Variables that would tell Lightning it already runs inside a launched process group.
LAUNCH_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                    "MASTER_ADDR", "MASTER_PORT")


def _rank_reports(out_dir: Path) -> tuple[dict, dict]:
    rank0, rank1 = (json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["rank"], rank1["rank"], rank0["world_size"], rank1["world_size"]) == (0, 1, 2, 2)
    # 2 epochs x 4 batches per rank; SET every 2 steps, never after the final step 8
    assert rank0["step"] == rank0["global_step"] == 8
    assert len(rank0["updates"]) == 3 and all(grown > 0 for grown in rank0["updates"])
    assert rank0["grads_seen"] and rank0["inactive_zero"]
    for key in ("masks", "weights", "seed", "step", "updates", "grads_seen", "inactive_zero"):
        assert rank0[key] == rank1[key], key
    return rank0, rank1


def test_ddp_spawn_keeps_masks_identical_on_every_rank(tmp_path):
    module = run_ranks(tmp_path)  # the worker processes are spawned from this one
    rank0, _ = _rank_reports(tmp_path)
    # the weights Lightning copies back into this process are rank 0's sparse ones
    assert digest(module.state_dict().values()) == rank0["weights"]


def test_ddp_keeps_masks_identical_on_every_rank(tmp_path):
    """Plain ``ddp`` starts the script again for rank 1, so the fit runs as a script in a subprocess."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, str(WORKER), str(tmp_path), "ddp"], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr  # Lightning's ddp launcher ran both ranks
    _rank_reports(tmp_path)
