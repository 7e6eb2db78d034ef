"""SparsityCallback's set-up, logging, errors, and what it leaves after ``fit``."""

from __future__ import annotations

import pytest
import torch
from lightning_helpers import GradientRecorder, TinyModule, fit, make_loader, make_trainer, masks_of, plain_loop

import sparsecore
from sparsecore import ConfigurationError
from sparsecore.sparsifier import attached_sparsifier
from sparsecore_lightning import SparsityCallback


def test_builds_the_sparsifier_at_fit_start_with_the_trainers_steps(tmp_path):
    callback = SparsityCallback("set", density=0.25, seed=1, prune_rate=0.5, exclude=["net.4"])
    module = TinyModule()
    assert callback.sparsifier is None
    fit(make_trainer(tmp_path, [callback], max_epochs=2, accumulate_grad_batches=4), module, make_loader())
    sparsifier = callback.sparsifier
    assert sparsifier.model is module and sparsifier.total_steps == 4  # 2 epochs x 8 batches / 4
    assert list(sparsifier.layers) == ["net.0", "net.2"] and sparsifier.algorithm.prune_rate == 0.5
    assert sparsifier.nnz == round(0.25 * 512) + round(0.25 * 768)


def test_logs_density_and_the_last_updates_counts(tmp_path):
    callback = SparsityCallback("set", density=0.25, seed=1)
    trainer = make_trainer(tmp_path, [callback], max_epochs=3)
    fit(trainer, TinyModule(), make_loader())
    sparsifier = callback.sparsifier
    last = sparsifier.history[-1]  # after epoch 1; none after the final epoch 2
    assert (last.epoch, len(sparsifier.history)) == (1, 2)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged == {
        "sparsity/density": sparsifier.nnz / 1376,
        "sparsity/pruned": float(sum(u.pruned for u in last.layers.values())),
        "sparsity/grown": float(sum(u.grown for u in last.layers.values())),
        "sparsity/run_train_flops_ratio": pytest.approx(0.25),  # SET: masked gradients, fixed counts (P = 1)
    }
    assert logged["sparsity/pruned"] == logged["sparsity/grown"] > 0


class Labelled(sparsecore.Algorithm):
    """A static mask whose metrics hold a number and a string."""

    name = "labelled"

    def metrics(self, sparsifier):
        return {"steps_seen": sparsifier.step, "phase": "sparse"}


def test_logs_the_algorithms_numeric_metrics(tmp_path):
    trainer = make_trainer(tmp_path, [SparsityCallback(Labelled(), density=0.5)], max_epochs=2)
    fit(trainer, TinyModule(), make_loader())
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged == {"sparsity/density": 688 / 1376, "sparsity/pruned": 0.0, "sparsity/grown": 0.0,
                      "sparsity/run_train_flops_ratio": pytest.approx(0.5),
                      "sparsity/steps_seen": 16.0}  # the string is not logged


def test_log_metrics_false_logs_nothing(tmp_path):
    trainer = make_trainer(tmp_path, [SparsityCallback("set", density=0.25, log_metrics=False)], max_epochs=2)
    fit(trainer, TinyModule(), make_loader())
    assert dict(trainer.callback_metrics) == {}


def test_after_fit_the_engine_stays_attached_and_a_second_fit_continues(tmp_path):
    callback = SparsityCallback("set", density=0.25, seed=1)
    module = TinyModule()
    fit(make_trainer(tmp_path, [callback], max_epochs=2), module, make_loader())
    first = callback.sparsifier
    optimizer = first.optimizer
    assert attached_sparsifier(module) is first
    assert "step" not in vars(optimizer)  # the optimizer keeps its own step: only the engine's hooks are on it
    masks = masks_of(first)
    first_logged = callback.metrics()
    assert first_logged["grown"] > 0  # the update after epoch 0

    fit(make_trainer(tmp_path, [callback], max_epochs=1), module, make_loader())
    second = callback.sparsifier
    assert second.history == [] and callback.metrics() == first_logged  # the last update is still the one logged
    assert second is not first and attached_sparsifier(module) is second and attached_sparsifier(optimizer) is None
    assert second.step == 16 + 8 and second.epoch == 0 and second.total_steps == 24
    assert all(torch.equal(second.layers[n].mask, m) for n, m in masks.items())  # one epoch: no update

    callback.remove()
    assert attached_sparsifier(module) is None and callback.sparsifier is second
    for layer in second.layers.values():
        assert not layer.weight[~layer.mask].any()  # the model stays sparse


def test_model_and_optimizer_come_from_the_trainer():
    with pytest.raises(ConfigurationError, match=r"\['model'\] come from the Trainer"):
        SparsityCallback("set", model=torch.nn.Linear(2, 2))


class ManualOptimization(TinyModule):
    automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_manual_optimization_equals_the_plain_loop(tmp_path):
    lightning_grads, loop_grads = GradientRecorder(), GradientRecorder()
    callback = SparsityCallback("set", density=0.25, seed=7, plugins=[lightning_grads])
    module = ManualOptimization()
    fit(make_trainer(tmp_path, [callback], max_epochs=2), module, make_loader())
    reference = TinyModule()
    expected = plain_loop(reference, make_loader(), 2, seed=7, plugins=[loop_grads])
    assert callback.sparsifier.step == 16 and len(callback.sparsifier.history) == 1
    assert lightning_grads.norms == loop_grads.norms and len(loop_grads.norms) == 16
    assert all(torch.equal(callback.sparsifier.layers[n].mask, m) for n, m in masks_of(expected).items())
    for (name, got), want in zip(module.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


class TwoOptimizers(TinyModule):
    automatic_optimization = False

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]


def test_two_optimizers_are_refused(tmp_path):
    trainer = make_trainer(tmp_path, [SparsityCallback("set")], max_epochs=1)
    with pytest.raises(ConfigurationError, match="exactly one optimizer from configure_optimizers, the trainer has 2"):
        fit(trainer, TwoOptimizers(), make_loader())


def test_two_callbacks_are_refused_by_lightning(tmp_path):
    """A model takes one sparsifier, and Lightning refuses two callbacks with one checkpoint entry."""
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `SparsityCallback`"):
        make_trainer(tmp_path, [SparsityCallback("set"), SparsityCallback("static")], max_epochs=1)


def test_metrics_before_fit_say_why():
    with pytest.raises(ConfigurationError, match="no sparsifier yet; it is built when Trainer.fit starts"):
        SparsityCallback("set").metrics()
