"""The sparsifier's state travels inside Lightning checkpoints; ``ckpt_path=`` resumes exactly."""

from __future__ import annotations

import pytest
import torch
from lightning_helpers import (
    StopAfterEpoch,
    TinyModule,
    ValidatedModule,
    fit,
    make_loader,
    make_trainer,
    masks_of,
)
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsecore import CheckpointError
from sparsecore_lightning import SparsityCallback

EPOCHS = 4


def _straight_and_resumed(tmp_path, module_type=TinyModule, trainer_options=None, **sparsifier_options):
    """An uninterrupted 4-epoch run, and one stopped after epoch 1 then resumed from its last checkpoint."""
    trainer_options = trainer_options or {}
    straight = SparsityCallback("set", density=0.25, seed=3, **sparsifier_options)
    straight_module = module_type()
    trainer = make_trainer(tmp_path / "a", [straight], max_epochs=EPOCHS, **trainer_options)
    fit(trainer, straight_module, make_loader(), **_val(module_type))

    first = SparsityCallback("set", density=0.25, seed=3, **sparsifier_options)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer = make_trainer(tmp_path / "b", [first, StopAfterEpoch(1), saver], max_epochs=EPOCHS,
                           enable_checkpointing=True, **trainer_options)
    fit(trainer, module_type(), make_loader(), **_val(module_type))
    assert trainer.current_epoch == 2 and sorted(p.name for p in (tmp_path / "ckpt").iterdir())[-1] == "epoch=1.ckpt"

    resumed = SparsityCallback("set", density=0.25, seed=3, **sparsifier_options)
    resumed_module = module_type(seed=99)  # other initial weights: the checkpoint must restore everything
    trainer = make_trainer(tmp_path / "c", [resumed], max_epochs=EPOCHS, **trainer_options)
    fit(trainer, resumed_module, make_loader(), ckpt_path=saver.last_model_path or str(tmp_path / "ckpt" /
                                                                                        "epoch=1.ckpt"),
        **_val(module_type))
    return (straight, straight_module), (resumed, resumed_module)


def _val(module_type):
    return {"val_dataloaders": make_loader(seed=1, batches=2)} if module_type is ValidatedModule else {}


def _assert_same_run(a, b):
    (cb_a, mod_a), (cb_b, mod_b) = a, b
    sa, sb = cb_a.sparsifier, cb_b.sparsifier
    assert sa.step == sb.step == EPOCHS * 8
    for name, mask in masks_of(sa).items():
        assert torch.equal(sb.layers[name].mask, mask), name
    for (name, got), want in zip(mod_b.state_dict().items(), mod_a.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    assert torch.equal(sa.generator.get_state(), sb.generator.get_state())


@pytest.mark.parametrize("update_every", ["epoch", 5])
def test_resume_continues_exactly(update_every, tmp_path):
    straight, resumed = _straight_and_resumed(tmp_path, update_every=update_every)
    updates = len(straight[0].sparsifier.history)
    assert updates == (EPOCHS - 1 if update_every == "epoch" else (EPOCHS * 8 - 1) // 5)
    assert len(resumed[0].sparsifier.history) < updates  # the resumed run made only the second half's updates
    _assert_same_run(straight, resumed)


def test_resume_from_a_checkpoint_written_before_the_epoch_end_update(tmp_path):
    """With validation every second epoch, ModelCheckpoint saves at validation end, before the epoch's update."""
    straight, resumed = _straight_and_resumed(tmp_path, ValidatedModule, {"check_val_every_n_epoch": 2})
    assert len(straight[0].sparsifier.history) == EPOCHS - 1
    _assert_same_run(straight, resumed)


def test_checkpoint_holds_the_sparsifier_state(tmp_path):
    callback = SparsityCallback("set", density=0.25, seed=3)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    fit(trainer, TinyModule(), make_loader())
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["callbacks"]["SparsityCallback"]["sparsifier"]
    assert state["step"] == 16 and state["epoch"] == 1 and state["algorithm"] == "set"
    for name, mask in masks_of(callback.sparsifier).items():
        assert torch.equal(state["masks"][name], mask)


def test_resume_with_another_density_is_refused_and_leaves_the_weights(tmp_path):
    callback = SparsityCallback("set", density=0.25, seed=3)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    fit(trainer, TinyModule(), make_loader())
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]

    other = SparsityCallback("set", density=0.5, seed=3)
    module = TinyModule(seed=5)
    trainer = make_trainer(tmp_path, [other], max_epochs=2)
    with pytest.raises(CheckpointError, match="checkpoint is of density 0.25, this run uses 0.5"):
        fit(trainer, module, make_loader(), ckpt_path=str(path))
    for name, value in module.state_dict().items():  # the restored weights, not masked by a fresh mask
        assert torch.equal(value, saved[name]), name
    assert other.sparsifier is None


def test_a_checkpoint_entry_without_sparsifier_state_is_refused():
    with pytest.raises(CheckpointError, match="'SparsityCallback' entry holds no sparsifier state"):
        SparsityCallback("set").load_state_dict({"masks": {}})


def test_a_resumed_run_logs_the_last_update_made_before_the_resume(tmp_path):
    """3 epochs: updates after epochs 0 and 1; resumed after epoch 1, the final epoch makes none of its own."""
    straight = SparsityCallback("set", density=0.25, seed=3)
    trainer = make_trainer(tmp_path / "a", [straight], max_epochs=3)
    fit(trainer, TinyModule(), make_loader())
    straight_logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    last = straight.sparsifier.history[-1]
    assert last.epoch == 1 and straight_logged["sparsity/grown"] == sum(u.grown for u in last.layers.values()) > 0

    first = SparsityCallback("set", density=0.25, seed=3)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer = make_trainer(tmp_path / "b", [first, StopAfterEpoch(1), saver], max_epochs=3,
                           enable_checkpointing=True)
    fit(trainer, TinyModule(), make_loader())
    entry = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=True)["callbacks"]["SparsityCallback"]
    assert entry["last_update"] == {"pruned": sum(u.pruned for u in last.layers.values()),
                                    "grown": sum(u.grown for u in last.layers.values())}

    resumed = SparsityCallback("set", density=0.25, seed=3)
    trainer = make_trainer(tmp_path / "c", [resumed], max_epochs=3)
    fit(trainer, TinyModule(), make_loader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    assert resumed.sparsifier.history == []  # the engine's history holds this run's updates only
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == straight_logged
    assert resumed.state_dict()["last_update"] == entry["last_update"]  # and the next checkpoint keeps them


def test_a_checkpoint_entry_without_the_last_updates_counts_reads_as_no_update_yet(tmp_path):
    callback = SparsityCallback("set", density=0.25, seed=3)
    fit(make_trainer(tmp_path, [callback], max_epochs=2), TinyModule(), make_loader())
    state = callback.sparsifier.state_dict()
    older = SparsityCallback("set", density=0.25, seed=3)
    older.load_state_dict({"sparsifier": state})  # an entry written before the counts were kept
    assert older.state_dict()["last_update"] == {"pruned": 0, "grown": 0}


@pytest.mark.parametrize("counts", [{"pruned": -1, "grown": 0}, {"pruned": 1.5, "grown": 2}, {"grown": 3}, [1, 2]])
def test_malformed_last_update_counts_are_refused(counts):
    with pytest.raises(CheckpointError, match=r"'SparsityCallback' entry has 'last_update' = .*; expected \{'pruned'"):
        SparsityCallback("set").load_state_dict({"sparsifier": {}, "last_update": counts})
