"""The runnable example of docs/guides/huggingface.md runs as printed and trains a sparse GPT-2."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "guides" / "huggingface.md"


def test_the_guide_example_runs_and_trains_sparse(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(GUIDE), "exec"), namespace)
    sparsifier = namespace["callback"].sparsifier
    assert sparsifier.step == namespace["trainer"].state.global_step == 16  # 2 epochs of 64 / 8 batches
    assert [report.step for report in sparsifier.history] == [4, 8, 12]
    assert abs(sparsifier.report().density - 0.1) < 1e-3
    assert sorted(p.name for p in (tmp_path / "gpt2-sparse").iterdir()) == ["checkpoint-16", "checkpoint-8"]
    assert (tmp_path / "gpt2-sparse" / "checkpoint-8" / "sparsecore_sparsifier.pt").is_file()
    out = capsys.readouterr().out
    assert "| `transformer.h.0.attn.c_attn.weight` | sparse | attention projection" in out
    assert "| **total** |" in out
