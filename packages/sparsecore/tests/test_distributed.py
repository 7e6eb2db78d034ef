"""DDP with two gloo processes seeded differently: masks are identical on every rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(algorithm, tmp_path):
    result = tmp_path / "result.json"
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(worker), algorithm, str(result), str(free_port())],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.mark.parametrize("algorithm", ["set", "momentum"])
def test_masks_identical_across_ranks(algorithm, tmp_path):
    data = run_worker(algorithm, tmp_path)
    assert data["checks"] == [True] * 7  # after init and after every step (updates included)
    assert data["updates"] == 3
    assert data["weights_equal"]


def test_broadcast_makes_rank_local_choices_agree(tmp_path):
    data = run_worker("rank-local", tmp_path)
    # select_grow chose different weights on the two ranks ...
    assert data["choices_equal"] is False and data["grown"] > 0
    # ... and the engine's broadcast still left identical masks and weights after every update
    assert data["checks"] == [True] * 7
    assert data["updates"] == 3
    assert data["weights_equal"]
    # without the broadcast the same run diverges at the first update (after step 2) and stays apart
    unsynced = data["without_broadcast"]
    assert unsynced["choices_equal"] is False
    assert unsynced["checks"] == [True, True, False, False, False, False, False]
    assert unsynced["weights_equal"] is False
