"""Tiny GPT-2 and BERT models built from a config (no download), random token data, and a Trainer runner."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

VOCAB, SEQ, SAMPLES, BATCH = 32, 8, 16, 4
STEPS_PER_EPOCH = SAMPLES // BATCH


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine's cores are shared: one torch thread per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_gpt2(n_layer: int = 2) -> GPT2LMHeadModel:
    """A two-block GPT-2 (fused QKV ``Conv1D``, ``lm_head`` tied to ``wte``), identical for every call."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=n_layer, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def make_bert() -> BertForSequenceClassification:
    """A two-block BERT classifier (separate query/key/value Linears, pooler and classifier heads)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def lm_data() -> list[dict[str, torch.Tensor]]:
    """Random token sequences for causal language modelling (labels = inputs)."""
    tokens = torch.randint(0, VOCAB, (SAMPLES, SEQ), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": x, "labels": x} for x in tokens]


def classification_data() -> list[dict[str, torch.Tensor]]:
    """Random token sequences with random binary labels."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (SAMPLES, SEQ), generator=gen)
    labels = torch.randint(0, 2, (SAMPLES,), generator=gen)
    return [{"input_ids": x, "labels": y} for x, y in zip(tokens, labels)]


class StopAt(TrainerCallback):
    """Stops training after optimizer step ``step``: an interruption."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def training_args(output_dir, **overrides) -> TrainingArguments:
    """CPU, no reporting, no logging, 3 epochs of 4 steps; ``overrides`` replace any of these."""
    options = dict(per_device_train_batch_size=BATCH, num_train_epochs=3, learning_rate=1e-2, report_to=[],
                   use_cpu=True, save_strategy="no", logging_strategy="no", seed=0, disable_tqdm=True,
                   dataloader_num_workers=0)
    options.update(overrides)
    return TrainingArguments(str(output_dir), **options)


@pytest.fixture
def train():
    """``train(model, data, output_dir, callbacks, resume=None, eval_dataset=None, **args) -> Trainer``: a Trainer run."""

    def run(model, data, output_dir, callbacks, resume=None, **overrides):
        eval_data = overrides.pop("eval_dataset", None)
        trainer = Trainer(model=model, args=training_args(output_dir, **overrides), train_dataset=data,
                          eval_dataset=eval_data, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    return run


@pytest.fixture
def hf():
    """The models, data and constants above, for the test modules."""
    return SimpleNamespace(gpt2=make_gpt2, bert=make_bert, lm_data=lm_data, classification_data=classification_data,
                           StopAt=StopAt, steps_per_epoch=STEPS_PER_EPOCH, seq=SEQ)
