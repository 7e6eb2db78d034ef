"""SparsityCallback under the real Hugging Face Trainer (CPU, tiny GPT-2 and BERT, random tokens).

Three epochs of four optimizer steps each unless a test says otherwise.
"""

from __future__ import annotations

import shutil

import pytest
import sparsecore
import torch
from accelerate.optimizer import AcceleratedOptimizer
from sparsecore_transformers import STATE_FILE, SparsityCallback, load_state, torch_optimizer

GPT2_SPARSE = [f"transformer.h.{i}.{name}" for i in range(2)
               for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
BERT_SPARSE = [f"bert.encoder.layer.{i}.{name}" for i in range(2)
               for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                            "attention.output.dense", "intermediate.dense", "output.dense")]


def _assert_masked(sparsifier):
    for name, layer in sparsifier.layers.items():
        weight = layer.weight.detach()
        assert not weight[~layer.mask].any(), f"{name}: an inactive weight is nonzero"
        assert layer.nnz == round(layer.target_density * layer.capacity), name


def test_gpt2_run_makes_the_block_projections_sparse_on_the_inner_torch_optimizer(hf, train, tmp_path):
    model = hf.gpt2()
    embeddings = model.transformer.wte.weight.detach().clone()
    callback = SparsityCallback("static", density=0.25)
    trainer = train(model, hf.lm_data(), tmp_path, [callback])
    sparsifier = callback.sparsifier
    assert isinstance(trainer.optimizer, AcceleratedOptimizer)
    assert sparsifier.optimizer is trainer.optimizer.optimizer is torch_optimizer(trainer.optimizer)
    assert list(sparsifier.layers) == GPT2_SPARSE
    assert {layer.kind for layer in sparsifier.layers.values()} == {"transformers.conv1d"}
    assert {layer.output_positions for layer in sparsifier.layers.values()} == {hf.seq}
    assert sparsifier.step == trainer.state.global_step == 3 * hf.steps_per_epoch
    assert sparsifier.total_steps == trainer.state.max_steps == 12
    _assert_masked(sparsifier)
    wte = model.transformer.wte.weight.detach()
    assert model.lm_head.weight is model.transformer.wte.weight and bool(wte.all())  # tied output: dense, trained
    assert not torch.equal(wte, embeddings)
    assert sparsifier.seed == 0  # TrainingArguments.seed


def test_epoch_updates_run_after_every_epoch_but_the_last(hf, train, tmp_path):
    callback = SparsityCallback("set", density=0.25, update_every="epoch")
    train(hf.gpt2(), hf.lm_data(), tmp_path, [callback])
    assert [(report.step, report.epoch) for report in callback.sparsifier.history] == [(4, 0), (8, 1)]
    assert callback.sparsifier.epoch == 2
    assert all(sum(u.grown for u in report.layers.values()) > 0 for report in callback.sparsifier.history)
    _assert_masked(callback.sparsifier)


def test_step_updates_come_from_the_engine_every_k_steps(hf, train, tmp_path):
    callback = SparsityCallback("set", density=0.25, update_every=5)
    train(hf.gpt2(), hf.lm_data(), tmp_path, [callback])
    assert [report.step for report in callback.sparsifier.history] == [5, 10]


def test_epoch_cut_short_by_max_steps_is_reported_once(hf, train, tmp_path):
    callback = SparsityCallback("set", density=0.25, update_every="epoch")
    trainer = train(hf.gpt2(), hf.lm_data(), tmp_path, [callback], max_steps=10)
    assert trainer.state.global_step == 10 and trainer.state.epoch == 2.5
    assert callback.sparsifier.epoch == 2  # the partial third epoch was reported
    # the engine takes an epoch ending within half an epoch of total_steps for the final one: no update after it
    assert [report.step for report in callback.sparsifier.history] == [4]


def test_bert_with_gradient_accumulation_steps_once_per_optimizer_step(hf, train, tmp_path):
    model = hf.bert()
    heads = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith(("classifier",
                                                                                                   "bert.pooler"))}
    callback = SparsityCallback("set", density=0.25, update_every="epoch")
    trainer = train(model, hf.classification_data(), tmp_path, [callback], gradient_accumulation_steps=2)
    sparsifier = callback.sparsifier
    assert list(sparsifier.layers) == BERT_SPARSE
    assert sparsifier.step == trainer.state.global_step == 6  # 2 optimizer steps per epoch of 4 batches
    assert [report.step for report in sparsifier.history] == [2, 4]
    _assert_masked(sparsifier)
    params = dict(model.named_parameters())
    for name, before in heads.items():  # dense and trained
        assert not torch.equal(params[name].detach(), before), name
        assert bool(params[name].detach().all()) or name.endswith("bias"), name


#: rigl and sparse-momentum are packages of this repository, installed in its test environment.
RESUMES = [
    pytest.param("set", {"update_every": "epoch"}, 4, id="set-epochs-resume-at-an-epoch-end"),
    pytest.param("set", {"update_every": "epoch"}, 6, id="set-epochs-resume-mid-epoch"),
    pytest.param("set", {"update_every": 3}, 7, id="set-every-3-steps"),
    pytest.param("rigl", {"update_every": 2, "update_end": 1.0}, 6, id="rigl-every-2-steps"),
    pytest.param("sparse-momentum", {}, 6, id="sparse-momentum-epochs"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "options", "stop"), RESUMES)
def test_interrupted_and_resumed_run_ends_exactly_like_the_straight_run(hf, train, tmp_path, algorithm, options,
                                                                         stop):
    straight_model = hf.gpt2()
    straight = SparsityCallback(algorithm, density=0.25, **options)
    train(straight_model, hf.lm_data(), tmp_path / "straight", [straight])

    first = SparsityCallback(algorithm, density=0.25, **options)
    train(hf.gpt2(), hf.lm_data(), tmp_path / "run", [first, hf.StopAt(stop)], save_strategy="steps",
          save_steps=stop)
    checkpoint = tmp_path / "run" / f"checkpoint-{stop}"
    assert (checkpoint / STATE_FILE).is_file()
    assert first.sparsifier.step == stop

    resumed_model = hf.gpt2()  # a fresh process would build the model anew; the checkpoint brings its weights
    resumed = SparsityCallback(algorithm, density=0.25, **options)
    train(resumed_model, hf.lm_data(), tmp_path / "run", [resumed], resume=str(checkpoint))

    updates = [report.step for report in straight.sparsifier.history]
    assert any(step <= stop for step in updates) and any(step > stop for step in updates), updates
    assert [report.step for report in resumed.sparsifier.history] == [s for s in updates if s > stop]
    assert resumed.sparsifier.step == straight.sparsifier.step == 12
    for name, layer in straight.sparsifier.layers.items():
        assert torch.equal(resumed.sparsifier.layers[name].mask, layer.mask), name
    expected, got = straight_model.state_dict(), resumed_model.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert torch.equal(resumed.sparsifier.generator.get_state(), straight.sparsifier.generator.get_state())


def test_resume_from_a_checkpoint_without_sparsifier_state_is_refused(hf, train, tmp_path):
    train(hf.gpt2(), hf.lm_data(), tmp_path, [hf.StopAt(4)], save_strategy="steps", save_steps=4)
    with pytest.raises(sparsecore.CheckpointError, match=STATE_FILE):
        train(hf.gpt2(), hf.lm_data(), tmp_path, [SparsityCallback("set", density=0.25)],
              resume=str(tmp_path / "checkpoint-4"))


@pytest.mark.slow
def test_checkpoint_outside_output_dir_is_found_through_training_arguments(hf, train, tmp_path):
    train(hf.gpt2(), hf.lm_data(), tmp_path / "run", [SparsityCallback("set", density=0.25), hf.StopAt(4)],
          save_strategy="steps", save_steps=4)
    moved = tmp_path / "elsewhere" / "checkpoint-4"
    shutil.copytree(tmp_path / "run" / "checkpoint-4", moved)
    with pytest.raises(sparsecore.CheckpointError, match="resume_from_checkpoint"):
        train(hf.gpt2(), hf.lm_data(), tmp_path / "other", [SparsityCallback("set", density=0.25)],
              resume=str(moved))
    callback = SparsityCallback("set", density=0.25)
    train(hf.gpt2(), hf.lm_data(), tmp_path / "other", [callback], resume=str(moved),
          resume_from_checkpoint=str(moved))
    assert callback.sparsifier.step == 12


def test_best_model_at_end_brings_the_masks_of_the_best_checkpoint(hf, train, tmp_path):
    callback = SparsityCallback("set", density=0.25, update_every="epoch")
    model = hf.gpt2()
    trainer = train(model, hf.lm_data(), tmp_path, [callback], eval_dataset=hf.lm_data(), eval_strategy="steps",
                    eval_steps=4, save_strategy="steps", save_steps=4, load_best_model_at_end=True,
                    metric_for_best_model="loss", greater_is_better=True)  # the worst loss: not the last checkpoint
    best = trainer.state.best_model_checkpoint
    assert trainer.state.best_global_step != 12, "the test needs a best checkpoint before the last"
    saved = load_state(best)["masks"]
    last = load_state(str(tmp_path / "checkpoint-12"))["masks"]
    assert any(not torch.equal(saved[name], last[name]) for name in saved)
    for name, layer in callback.sparsifier.layers.items():
        assert torch.equal(layer.mask, saved[name]), name
    _assert_masked(callback.sparsifier)


def test_own_layer_selection_replaces_the_transformer_one(hf, train, tmp_path):
    callback = SparsityCallback("static", density=0.25, include=["*.mlp.c_fc"], layer_types=[torch.nn.Linear,
                                                                                                 _conv1d()])
    train(hf.gpt2(), hf.lm_data(), tmp_path, [callback], num_train_epochs=1)
    assert callback.selection is None
    assert list(callback.sparsifier.layers) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]


def test_output_layer_flag_makes_the_tied_lm_head_sparse(hf, train, tmp_path):
    model = hf.gpt2()
    callback = SparsityCallback("static", density=0.25, output_layer=True)
    train(model, hf.lm_data(), tmp_path, [callback], num_train_epochs=1)
    assert list(callback.sparsifier.layers) == [*GPT2_SPARSE, "lm_head"]
    mask = callback.sparsifier.layers["lm_head"].mask
    assert not model.transformer.wte.weight.detach()[~mask].any()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"optimizer": None}, "optimizer"),
    ({"include": ["*"], "heads": True}, "heads"),
    ({"exclude": ["lm_head"], "embeddings": True}, "embeddings"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises(sparsecore.ConfigurationError, match=message):
        SparsityCallback("set", density=0.25, **kwargs)


def test_a_bad_sparsifier_option_fails_when_training_starts(hf, train, tmp_path):
    with pytest.raises(sparsecore.ConfigurationError, match="update_every"):
        train(hf.gpt2(), hf.lm_data(), tmp_path, [SparsityCallback("set", density=0.25, update_every=0)])


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def test_n_m_pattern_on_gpt2_conv1d_is_refused_by_name(hf, train, tmp_path):
    with pytest.raises(sparsecore.ConfigurationError, match="Conv1D.*output dimension"):
        train(hf.gpt2(), hf.lm_data(), tmp_path, [SparsityCallback("static", pattern="2:4")])


class RedrawAtAttach(sparsecore.Algorithm):
    """Redraws the sparse weights when attached (as SNIP's variance-scaling init does) and keeps the optimizer
    state of inactive weights only between updates (dense gradients, state zeroed when masks change)."""

    name = "redraw-at-attach"
    masking_policy = sparsecore.MaskingPolicy(mask_gradients=False, mask_optimizer_state=True)

    def __init__(self):
        self.schedule = sparsecore.UpdateSchedule(0.3, update_every=5, owner=self.name)

    @sparsecore.hookimpl
    def on_attach(self, sparsifier):
        with torch.no_grad():
            for layer in sparsifier.layers.values():
                layer.weight.normal_(0.0, 0.02, generator=sparsifier.generator)


@pytest.mark.slow
def test_resume_keeps_the_loaded_weights_and_optimizer_state_whatever_the_set_up_does(hf, train, tmp_path):
    """Building the resumed sparsifier redraws weights and would zero optimizer state; both are given back."""
    straight_model = hf.gpt2()
    straight = SparsityCallback(RedrawAtAttach(), density=0.25)
    train(straight_model, hf.lm_data(), tmp_path / "straight", [straight])
    train(hf.gpt2(), hf.lm_data(), tmp_path / "run", [SparsityCallback(RedrawAtAttach(), density=0.25),
                                                      hf.StopAt(7)], save_strategy="steps", save_steps=7)
    resumed_model = hf.gpt2()
    resumed = SparsityCallback(RedrawAtAttach(), density=0.25)
    train(resumed_model, hf.lm_data(), tmp_path / "run", [resumed], resume=str(tmp_path / "run" / "checkpoint-7"))
    assert [report.step for report in straight.sparsifier.history] == [5, 10]
    assert [report.step for report in resumed.sparsifier.history] == [10]
    expected, got = straight_model.state_dict(), resumed_model.state_dict()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
