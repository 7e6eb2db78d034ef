"""The FSDP2 guide's example runs on 2 gloo ranks as ``torchrun --nproc-per-node 2`` would start it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from docs_support import DOCS

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]

PAGE = DOCS / "guides" / "fsdp.md"
_BLOCK = re.compile(r'^```python title="fsdp_example.py"\n(?P<body>.*?)^```$', re.MULTILINE | re.DOTALL)
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_guide_example_trains_checkpoints_and_resumes(tmp_path):
    found = _BLOCK.search(PAGE.read_text(encoding="utf-8"))
    assert found, "docs/guides/fsdp.md has no code block titled 'fsdp_example.py'"
    script = tmp_path / "fsdp_example.py"
    script.write_text(found.group("body"), encoding="utf-8")
    port = str(free_port())
    procs = []
    for rank in range(WORLD):  # the environment torchrun gives each rank
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
               "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "checkpoint")], env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append((proc.returncode, out, err))
    for rank, (code, _, err) in enumerate(outputs):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    table = outputs[0][1]
    assert "| **total** |" in table and "| 0 |" in table and "| 2 |" in table  # rank 0 printed the report
    assert outputs[1][1] == ""  # and only rank 0
    assert (tmp_path / "checkpoint" / ".metadata").is_file()
