"""The runnable example of docs/guides/lightning.md runs as printed, trains sparse and resumes exactly."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "guides" / "lightning.md"


def test_the_guide_example_runs_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # pl.seed_everything sets it; undone after the test
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        exec(compile(blocks[0], str(GUIDE), "exec"), namespace)  # its own asserts compare the two runs
    first, resumed = namespace["callback"].sparsifier, namespace["resumed"].sparsifier
    assert first.step == resumed.step == namespace["trainer"].global_step == 64  # 4 epochs of 512 / 32
    assert [report.epoch for report in first.history] == [0, 1, 2]
    assert abs(first.report().density - 0.1) < 1e-3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"epoch={e}.ckpt" for e in range(4)]
    out = capsys.readouterr().out
    assert "| **total** |" in out and "sparsity/density" in out
