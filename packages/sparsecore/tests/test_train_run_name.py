"""--run-name is one folder inside --runs-dir: paths that would write elsewhere are refused."""

from __future__ import annotations

import pytest
import sparsecore
from sparsecore import cli
from sparsecore.train import TrainConfig

TINY_ARGS = ["--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
             "--batch-size", "20", "--density", "0.3", "--threads", "1", "--no-plots", "--quiet"]


def _train(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["train", *TINY_ARGS, *argv])
    return code, capsys.readouterr().err.splitlines()


MESSAGE = ("sparsecore train: error: --run-name must be a single folder name inside --runs-dir (without '/' or "
           "'\\', not '.' or '..'), got {!r}")


@pytest.mark.parametrize("name", ["../../escaped", "../escaped", "a/b", "a\\b", "..", ".", "x\0y", "ABSOLUTE"])
def test_run_name_must_stay_inside_the_runs_dir(tmp_path, capsys, name):
    runs = tmp_path / "one" / "two" / "runs"
    runs.mkdir(parents=True)
    name = str(tmp_path / "absolute-run") if name == "ABSOLUTE" else name
    code, err = _train(capsys, "--runs-dir", str(runs), "--run-name", name)
    assert (code, err) == (2, [MESSAGE.format(name)])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["one", "one/two", "one/two/runs"]


def test_run_name_is_checked_by_the_config_too():
    with pytest.raises(sparsecore.ConfigurationError, match="--run-name must be a single folder name"):
        TrainConfig(run_name="../x").validate()
    assert TrainConfig(run_name="a.b c-1").validate().run_name == "a.b c-1"


def test_run_name_is_used_as_given(tmp_path, capsys):
    code, _ = _train(capsys, "--runs-dir", str(tmp_path), "--run-name", "..baseline v1.")
    assert code == 0 and [p.name for p in tmp_path.iterdir()] == ["..baseline v1."]
    code, _ = _train(capsys, "--runs-dir", str(tmp_path), "--run-name", "..baseline v1.")
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["..baseline v1.", "..baseline v1.-2"]
