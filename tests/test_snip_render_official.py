"""benchmarks/snip/render_official.py renders the official-protocol page from the recorded rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "snip" / "render_official.py"


@pytest.fixture(scope="module")
def page():
    spec = importlib.util.spec_from_file_location("snip_render_official", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, density, seed, final, official, epochs=100):
    return {"method": method, "model": "lenet-300-100", "density": density, "seed": seed, "epochs": epochs,
            "test_error": final, "official_error": official, "checkpoints": [[53000, 0.98], [54000, 0.9801]]}


def test_page_has_per_seed_rows_means_and_the_gap(page):
    rows = [_row("snip (official protocol)", 0.05, 0, 2.0, 1.9), _row("snip (official protocol)", 0.05, 1, 2.2, 2.1),
            _row("snip (official protocol, first release)", 0.05, 0, 2.1, 2.1), _row("snip", 0.05, 0, 1.8, None)]
    text = page.render(rows, [_row("snip (official protocol)", 0.05, 0, 1.95, 1.8, epochs=200)])
    current, first = text.split("## snip-public's first release")
    assert "| 0.05 | 0 | 2.00 | 1.90 | 53k: 98.00, 54k: 98.01 | 1.6 | 1.80 |" in current
    assert "- 5 %: 2 seeds (0, 1): final-epoch error 2.10 ± 0.14 %, official figure 2.00 ± 0.14 %" in current
    assert "| 0.05 | 0 | 2.10 | 2.10 |" in first and "| 0.05 | 1 |" not in first
    assert "| 0.05 | 0 | 200 (108,000) | 1.95 | 1.80 | 2.00 / 1.90 |" in text
    assert "at 5 %, 2.00 % over 2 seeds (+0.40 points from the published 1.6 %" in text
    assert "Training longer changes the figure by -0.10 to -0.10 points (1 run" in text
    assert "within 0.10 points of the final error" in text


def test_page_without_runs_says_so(page):
    text = page.render([], [])
    assert text.count("No runs yet.") == 3 and "No runs of the current protocol yet." in text
