"""benchmarks/swat/tables.py renders cells with diverged runs apart from the runs that trained."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "swat" / "tables.py"


@pytest.fixture(scope="module")
def tables():
    sys.path.insert(0, str(SCRIPT.parents[1]))
    spec = importlib.util.spec_from_file_location("swat_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(row, sparsity, seed, final):
    return {"part": "mnist", "row": row, "sparsity": sparsity, "seed": seed, "completed": True,
            "test_acc_per_epoch": [0.5, final]}


def test_diverged_runs_are_counted_and_left_out_of_the_statistics(tables):
    rows = [_run("dense", None, 0, 0.9940), _run("dense", None, 1, 0.9938),
            _run("structured (channel)", 0.8, 0, 0.1135), _run("structured (channel)", 0.8, 1, 0.9909),
            _run("structured (channel)", 0.8, 2, 0.9919),
            _run("structured (channel)", 0.9, 0, 0.1135), _run("structured (channel)", 0.9, 1, 0.1135)]
    text = tables.render(rows, None, 30)
    assert "| lenet-5-caffe / mnist | dense | – | 99.39 ± 0.01 | – | 2 | s0 99.40, s1 99.38 |" in text
    assert ("| lenet-5-caffe / mnist | structured (channel) | 80 % | 99.14 ± 0.07 (1 of 3 diverged) | -0.25 | 3 | "
            "s0 11.35, s1 99.09, s2 99.19 |") in text
    assert ("| lenet-5-caffe / mnist | structured (channel) | 90 % | – (2 of 2 diverged) | – | 2 | "
            "s0 11.35, s1 11.35 |") in text
    assert "a run below 50 % counts as diverged" in text


def test_rows_selects_and_orders_the_queue(tables):
    names = [job.name for job in tables.jobs("mnist", [2], 30, ["structured (channel), lr 0.02", "SWAT-ERK"])]
    assert names == ["mnist-channel-lr02-80-s2", "mnist-channel-lr02-90-s2", "mnist-erk-80-s2", "mnist-erk-90-s2"]
    everything = [job.name for job in tables.jobs("mnist", [2], 30)]
    assert len(everything) == 11 and everything[0] == "mnist-dense-s2"
    with pytest.raises(ValueError, match="unknown row.*'SWAT-X'"):
        tables.jobs("mnist", [2], 30, ["SWAT-X"])
