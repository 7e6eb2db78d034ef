"""``sparsecore train --channels-last``: convolution weights in the channels-last format, same training."""

from __future__ import annotations

import json

import pytest
import torch
from sparsecore import cli
from sparsecore.train import TrainConfig, resume_training, run_training

TINY = {"model": "lenet-5-caffe", "dataset": "random", "limit_train": 200, "limit_test": 100, "batch_size": 50,
        "density": 0.1, "threads": 1, "quiet": True, "plots": False, "seed": 3}


def _conv_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.dim() == 4}


@pytest.mark.parametrize("algorithm", ["sparse-momentum", "set", "rigl", "swat", "snip"])
def test_channels_last_trains_the_same_masks_and_keeps_the_format_through_topology_updates(tmp_path, algorithm):
    contiguous = run_training(TrainConfig(algorithm=algorithm, epochs=2, runs_dir=str(tmp_path / "a"), **TINY))
    last = run_training(TrainConfig(algorithm=algorithm, epochs=2, channels_last=True, runs_dir=str(tmp_path / "b"),
                                    **TINY))
    convs = _conv_weights(last.model)
    assert set(convs) == {"conv1.weight", "conv2.weight"}
    for name, weight in convs.items():  # the engine's updates (two epoch ends) did not put them back
        assert weight.is_contiguous(memory_format=torch.channels_last), name
    assert not convs["conv2.weight"].is_contiguous()  # (conv1 has one input channel: both formats coincide)
    for name, layer in last.sparsifier.layers.items():
        assert torch.equal(layer.mask, contiguous.sparsifier.layers[name].mask), name
        assert int(layer.mask.sum()) == int(contiguous.sparsifier.layers[name].mask.sum()), name
    for (name, a), b in zip(contiguous.model.state_dict().items(), last.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-4), name  # only the rounding of the convolutions differs
    assert json.loads((last.run_dir / "config.json").read_text())["config"]["channels_last"] is True


def test_a_model_without_convolutions_is_left_as_is_with_a_notice(tmp_path, capsys):
    config = TrainConfig(algorithm="set", epochs=1, channels_last=True, runs_dir=str(tmp_path),
                         **{**TINY, "model": "lenet-300-100", "quiet": False})
    result = run_training(config)
    notice = "note: --channels-last changes nothing for lenet-300-100: it has no 4-D (convolution) weights"
    assert result.notices == [notice]
    assert notice in capsys.readouterr().err
    assert json.loads((result.run_dir / "config.json").read_text())["notices"] == [notice]


def test_a_resume_may_switch_the_format_and_continues_the_run(tmp_path):
    config = TrainConfig(algorithm="sparse-momentum", epochs=3, runs_dir=str(tmp_path / "a"), **TINY)
    stopped = run_training(config, stop_after=1)
    resumed = resume_training(stopped.run_dir, channels_last=True)
    straight = run_training(config.replace(runs_dir=str(tmp_path / "b")))
    assert resumed.completed and resumed.epochs_done == 3
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(resumed.model).values())
    moved = 0
    for name, layer in resumed.sparsifier.layers.items():  # the topology updates after epochs 1 and 2 agree
        assert torch.equal(layer.mask, straight.sparsifier.layers[name].mask), name
        moved += int((layer.mask != stopped.sparsifier.layers[name].mask).sum())
    assert moved > 0
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-4), name


def test_the_flag_reaches_the_config_and_can_be_turned_off_again(tmp_path):
    args = ["train", "--model", "lenet-5-caffe", "--dataset", "random", "--limit-train", "100", "--limit-test",
            "50", "--batch-size", "50", "--epochs", "1", "--threads", "1", "--quiet", "--no-plots", "--runs-dir",
            str(tmp_path), "--algorithm", "set", "--channels-last"]
    assert cli.main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["config"]["channels_last"] is True
    parsed = cli.build_parser().parse_args([*args, "--no-channels-last"])
    assert parsed.channels_last is False


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
def test_a_channels_last_run_exports_and_loads_back_exactly(tmp_path, fmt):
    from sparsecore.export import load_sparse

    result = run_training(TrainConfig(algorithm="set", epochs=1, channels_last=True, runs_dir=str(tmp_path), **TINY))
    assert cli.main(["export", str(result.run_dir), "--format", fmt]) == 0
    loaded = load_sparse(result.run_dir / f"model-{fmt}.safetensors")
    state = result.model.state_dict()
    assert set(loaded) == set(state)
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name
