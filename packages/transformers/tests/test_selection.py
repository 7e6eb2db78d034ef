"""transformer_layer_selection: which weights of GPT-2, BERT and a torch encoder become sparse, and why."""

from __future__ import annotations

import pytest
import sparsecore
import torch
from sparsecore_transformers import find_blocks, transformer_layer_selection
from torch import nn
from transformers.pytorch_utils import Conv1D

GPT2_SPARSE = [f"transformer.h.{i}.{name}" for i in range(2)
               for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
#: The engine names the embeddings it leaves dense in a warning; the selection lists them in ``dense``.
pytestmark = pytest.mark.filterwarnings("ignore:these modules stay dense:UserWarning")

BERT_SPARSE = [f"bert.encoder.layer.{i}.{name}" for i in range(2)
               for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                            "attention.output.dense", "intermediate.dense", "output.dense")]


def _sparsifier(model, selection):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, optimizer, "static", density=0.25, seed=0, **selection.sparsifier_kwargs())


def _trainable_names(model):
    return [name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]


def test_gpt2_blocks_projections_sparse_with_reasons_and_everything_else_dense(hf):
    model = hf.gpt2()
    selection = transformer_layer_selection(model)
    assert selection.blocks == ("transformer.h.0", "transformer.h.1")
    assert list(selection.include) == GPT2_SPARSE
    assert selection.exclude == ("lm_head",)
    assert Conv1D in selection.layer_types and nn.Embedding not in selection.layer_types
    assert selection.sparse == {
        "transformer.h.0.attn.c_attn.weight": "attention projection in block 'transformer.h.0'",
        "transformer.h.0.attn.c_proj.weight": "attention projection in block 'transformer.h.0'",
        "transformer.h.0.mlp.c_fc.weight": "feed-forward (MLP) projection in block 'transformer.h.0'",
        "transformer.h.0.mlp.c_proj.weight": "feed-forward (MLP) projection in block 'transformer.h.0'",
        "transformer.h.1.attn.c_attn.weight": "attention projection in block 'transformer.h.1'",
        "transformer.h.1.attn.c_proj.weight": "attention projection in block 'transformer.h.1'",
        "transformer.h.1.mlp.c_fc.weight": "feed-forward (MLP) projection in block 'transformer.h.1'",
        "transformer.h.1.mlp.c_proj.weight": "feed-forward (MLP) projection in block 'transformer.h.1'",
    }
    dense = selection.dense
    assert sorted([*selection.sparse, *dense]) == sorted(_trainable_names(model))
    assert dense["lm_head.weight"] == ("output layer tied to the input embeddings (one tensor): dense unless "
                                       "embeddings=True")
    assert dense["transformer.wte.weight"] == "the same tensor as lm_head.weight (dense)"
    assert dense["transformer.wpe.weight"] == "input embeddings: dense unless embeddings=True"
    assert dense["transformer.h.0.ln_1.weight"] == "normalisation scale or shift: stays dense"
    assert dense["transformer.h.1.mlp.c_fc.bias"] == "bias: stays dense (sparsecore makes weight matrices sparse)"
    assert list(dense)[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]  # model order


def test_gpt2_selection_drives_the_engine_conv1d_included_tied_weight_untouched(hf):
    model = hf.gpt2()
    tied = model.lm_head.weight.detach().clone()
    sparsifier = _sparsifier(model, transformer_layer_selection(model))
    assert list(sparsifier.layers) == GPT2_SPARSE
    c_attn = sparsifier.layers["transformer.h.0.attn.c_attn"]
    assert c_attn.kind == "transformers.conv1d" and tuple(c_attn.shape) == (16, 48)  # fused QKV, [in, out]
    assert c_attn.nnz == round(0.25 * 16 * 48)
    assert torch.equal(model.lm_head.weight.detach(), tied)
    model(torch.randint(0, 32, (2, hf.seq)))
    assert c_attn.output_positions == hf.seq


def test_gpt2_output_layer_flag_makes_the_tied_tensor_sparse_once(hf):
    model = hf.gpt2()
    selection = transformer_layer_selection(model, output_layer=True)
    assert list(selection.include) == [*GPT2_SPARSE, "lm_head"] and selection.exclude == ()
    assert selection.sparse["lm_head.weight"].endswith("sparse (asked for)")
    assert selection.sparse["transformer.wte.weight"] == "the same tensor as lm_head.weight (sparse)"
    assert selection.dense["transformer.wpe.weight"] == "input embeddings: dense unless embeddings=True"


def test_gpt2_embeddings_flag_names_the_tied_tensor_after_the_embedding(hf):
    model = hf.gpt2()
    selection = transformer_layer_selection(model, embeddings=True)
    assert nn.Embedding in selection.layer_types
    assert list(selection.include) == ["transformer.wte", "transformer.wpe", *GPT2_SPARSE]
    assert selection.sparse["lm_head.weight"] == "the same tensor as transformer.wte.weight (sparse)"
    sparsifier = _sparsifier(model, selection)
    assert list(sparsifier.layers) == list(selection.include)
    assert not model.lm_head.weight.detach()[~sparsifier.layers["transformer.wte"].mask].any()


def test_bert_heads_stay_dense_unless_asked(hf):
    model = hf.bert()
    selection = transformer_layer_selection(model)
    assert list(selection.include) == BERT_SPARSE
    assert selection.exclude == ("bert.pooler.dense", "classifier")
    reason = "outside the transformer blocks (pooler, classifier or head): dense unless heads=True"
    assert selection.dense["bert.pooler.dense.weight"] == selection.dense["classifier.weight"] == reason
    assert selection.sparse["bert.encoder.layer.1.attention.output.dense.weight"] == \
        "attention projection in block 'bert.encoder.layer.1'"
    assert selection.sparse["bert.encoder.layer.1.output.dense.weight"] == \
        "feed-forward (MLP) projection in block 'bert.encoder.layer.1'"
    assert selection.dense["bert.embeddings.token_type_embeddings.weight"] == \
        "input embeddings: dense unless embeddings=True"
    with_heads = transformer_layer_selection(model, heads=True)
    assert list(with_heads.include) == [*BERT_SPARSE, "bert.pooler.dense", "classifier"]
    assert list(_sparsifier(model, with_heads).layers) == list(with_heads.include)


class _Encoder(nn.Module):
    """A torch encoder (MultiheadAttention with a fused in_proj) under a head whose name holds glob characters."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.heads = nn.ModuleDict({"cls[*]": nn.Linear(16, 4)})

    def forward(self, x):
        return self.heads["cls[*]"](self.encoder(x))


def test_torch_encoder_attention_in_proj_and_a_glob_named_head():
    model = _Encoder()
    selection = transformer_layer_selection(model)
    assert find_blocks(model) == ["encoder.layers.0", "encoder.layers.1"]
    assert list(selection.include) == [f"encoder.layers.{i}.{name}" for i in range(2)
                                       for name in ("self_attn.in_proj_weight", "self_attn.out_proj", "linear1",
                                                    "linear2")]
    assert selection.sparse["encoder.layers.0.self_attn.in_proj_weight"] == \
        "attention projection in block 'encoder.layers.0'"
    assert selection.sparse["encoder.layers.0.linear2.weight"] == \
        "feed-forward (MLP) projection in block 'encoder.layers.0'"
    assert selection.exclude == ("heads.cls[[][*]]",)  # the exact name, escaped as a glob pattern
    sparsifier = _sparsifier(model, selection)
    assert "heads.cls[*]" not in sparsifier.layers and len(sparsifier.layers) == 8


def test_a_model_without_blocks_is_refused_with_the_way_out():
    with pytest.raises(sparsecore.ConfigurationError, match="no transformer blocks found.*include="):
        transformer_layer_selection(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))


def test_table_lists_every_trainable_parameter_once(hf):
    model = hf.bert()
    selection = transformer_layer_selection(model)
    lines = selection.table().splitlines()
    assert lines[:2] == ["| parameter | | why |", "|---|---|---|"]
    assert len(lines) == 2 + len(_trainable_names(model))
    assert "| `bert.encoder.layer.0.attention.self.query.weight` | sparse | attention projection in block " \
           "'bert.encoder.layer.0' |" in lines
