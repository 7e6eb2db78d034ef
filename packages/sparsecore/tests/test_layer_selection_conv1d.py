"""Layer types of other libraries whose name is a built-in kind: transformers' ``Conv1D``.

GPT-2's ``Conv1D`` is a linear layer whose weight is stored ``[in, out]``; it
is not ``nn.Conv1d``. Selected through ``layer_types``, it must not take the
kind ``"conv1d"``: the engine counts a convolution's output positions after
the channel dimension (which for ``Conv1D``'s ``(batch, seq, out)`` output
would be ``out`` instead of ``seq``) and ``dense_first_layer="conv"`` keeps a
first convolution dense.
"""

from __future__ import annotations

import pytest
import sparsecore
import torch
from torch import nn

SEQ, BATCH, WIDTH, HIDDEN = 5, 3, 8, 12


class Conv1D(nn.Module):
    """Stand-in for ``transformers.pytorch_utils.Conv1D``: ``y = x @ W + b`` with ``W`` of shape ``[nx, nf]``."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class Mlp(nn.Module):
    """Two Conv1D projections, as GPT-2's MLP (``c_fc`` then ``c_proj``)."""

    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(HIDDEN, WIDTH)
        self.c_proj = Conv1D(WIDTH, HIDDEN)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)))


class Gated(nn.Module):
    """A custom layer type whose name is no built-in kind."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(WIDTH, WIDTH))

    def forward(self, x):
        return x @ self.weight


def _sparsifier(model, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.5, seed=0, **kwargs)


def _expected_kind(cls):
    return f"{cls.__module__.split('.')[0]}.conv1d"


def test_conv1d_lookalike_gets_a_kind_of_its_own_and_nn_conv1d_keeps_conv1d():
    model = nn.ModuleDict({"gpt": Mlp(), "conv": nn.Conv1d(WIDTH, WIDTH, 3)})
    sp = _sparsifier(model, layer_types=[Conv1D, nn.Conv1d])
    kinds = {name: layer.kind for name, layer in sp.layers.items()}
    assert kinds == {"gpt.c_fc": _expected_kind(Conv1D), "gpt.c_proj": _expected_kind(Conv1D), "conv": "conv1d"}
    assert _expected_kind(Conv1D) != "conv1d"


def test_custom_type_with_a_name_of_its_own_keeps_its_lower_case_name():
    sp = _sparsifier(nn.Sequential(Gated()), layer_types=[Gated])
    assert sp.layers["0"].kind == "gated"


def test_conv1d_output_positions_are_the_sequence_length_like_a_linear():
    torch.manual_seed(0)
    model = Mlp()
    sp = _sparsifier(model, layer_types=[Conv1D])
    model(torch.randn(BATCH, SEQ, WIDTH))
    assert {name: layer.output_positions for name, layer in sp.layers.items()} == {"c_fc": SEQ, "c_proj": SEQ}
    report = sp.report()
    c_fc = next(s for s in report.layers if s.name == "c_fc")
    assert c_fc.dense_forward_flops == 2 * WIDTH * HIDDEN * SEQ
    assert c_fc.forward_flops == 2 * sp.layers["c_fc"].nnz * SEQ


def test_dense_first_layer_conv_does_not_take_conv1d_for_a_convolution():
    sp = _sparsifier(Mlp(), layer_types=[Conv1D], dense_first_layer="conv")
    assert list(sp.layers) == ["c_fc", "c_proj"]
    conv_first = nn.Sequential(nn.Conv1d(WIDTH, WIDTH, 3), nn.Conv1d(WIDTH, WIDTH, 3))
    assert list(_sparsifier(conv_first, dense_first_layer="conv").layers) == ["1"]


def test_transformers_conv1d_is_kind_transformers_conv1d():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils",
                                        reason="transformers is a test dependency of sparsecore-transformers only")
    model = nn.Sequential(pytorch_utils.Conv1D(HIDDEN, WIDTH))
    sp = _sparsifier(model, layer_types=[pytorch_utils.Conv1D])
    model(torch.randn(BATCH, SEQ, WIDTH))
    assert sp.layers["0"].kind == "transformers.conv1d"
    assert sp.layers["0"].output_positions == SEQ
