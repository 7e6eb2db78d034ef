"""Inside a Lightning Trainer the engine sees and does exactly what it does in a hand-written loop."""

from __future__ import annotations

import pytest
import torch
from lightning_helpers import GradientRecorder, TinyModule, fit, make_loader, make_trainer, masks_of, plain_loop

from sparsecore_lightning import SparsityCallback

EPOCHS = 3

CASES = {
    "fp32": ({}, {}),
    "accumulate_grad_batches=2": ({"accumulate_grad_batches": 2}, {"accumulate": 2}),
    "gradient_clip_val": ({"gradient_clip_val": 0.05}, {"clip": 0.05}),
    "bf16-mixed": ({"precision": "bf16-mixed"}, {"autocast_dtype": torch.bfloat16}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lightning_run_equals_the_plain_loop(case, tmp_path):
    trainer_options, loop_options = CASES[case]
    lightning_grads, loop_grads = GradientRecorder(), GradientRecorder()
    callback = SparsityCallback("set", density=0.25, seed=7, plugins=[lightning_grads])
    module = TinyModule()
    trainer = make_trainer(tmp_path, [callback], max_epochs=EPOCHS, **trainer_options)
    fit(trainer, module, make_loader())

    reference = TinyModule()
    expected = plain_loop(reference, make_loader(), EPOCHS, seed=7, plugins=[loop_grads], **loop_options)

    sparsifier = callback.sparsifier
    assert sparsifier is not None
    steps = EPOCHS * 8 // loop_options.get("accumulate", 1)
    assert sparsifier.step == expected.step == trainer.global_step == steps
    assert sparsifier.total_steps == steps
    assert len(sparsifier.history) == len(expected.history) == EPOCHS - 1  # no update after the final epoch
    assert all(sum(u.grown for u in r.layers.values()) > 0 for r in sparsifier.history)
    # the engine's step pre-hook saw every step's final (accumulated, clipped) gradients
    assert len(lightning_grads.norms) == steps
    assert all(norm is not None for norms in lightning_grads.norms for norm in norms)
    assert lightning_grads.norms == loop_grads.norms
    for name, mask in masks_of(expected).items():
        assert torch.equal(sparsifier.layers[name].mask, mask), name
    for (name, got), want in zip(module.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    # inactive weights are 0 and so is their momentum (gradients were masked before each update)
    for layer in sparsifier.layers.values():
        assert not layer.weight[~layer.mask].any()
        assert not sparsifier.optimizer.state[layer.weight]["momentum_buffer"][~layer.mask].any()
