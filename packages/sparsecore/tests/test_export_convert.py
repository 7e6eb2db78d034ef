"""squash, to_semi_structured (the CPU branch here; CUDA where present) and ONNX export of the squashed model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from sparsecore import Sparsifier
from sparsecore.export import ExportError, export_onnx, is_two_four, squash, to_semi_structured
from sparsecore.sparsifier import attached_sparsifier
from sparsecore.testing import make_sparsifier, train_steps

HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def mlp_24(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))


def two_four_sparsifier(model: nn.Module) -> Sparsifier:
    return Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="static", pattern="2:4", seed=0)


def test_squash_zeroes_inactive_weights_and_detaches_the_engine():
    sparsifier = make_sparsifier("set", density=0.3, update_every=2)
    train_steps(sparsifier, 4)
    masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
    active = {name: layer.weight.detach()[layer.mask].clone() for name, layer in sparsifier.layers.items()}
    optimizer = sparsifier.optimizer
    model = squash(sparsifier)
    assert model is sparsifier.model
    assert attached_sparsifier(model) is None and attached_sparsifier(optimizer) is None
    for name, module in model.named_children():
        if name not in masks:
            continue
        weight = module.weight.detach()
        assert torch.equal(weight[masks[name]], active[name])
        assert torch.equal(weight[~masks[name]], torch.zeros(int((~masks[name]).sum())))
        assert not torch.signbit(weight[~masks[name]]).any()  # +0.0, not the -0.0 masking by multiplication leaves
    train_steps(sparsifier, 1)  # the engine no longer masks: a dense step fills the zeros
    assert all(bool((module.weight[~masks[name]] != 0).any()) for name, module in model.named_children()
               if name in masks)


def test_squash_takes_a_sparsifier():
    with pytest.raises(ExportError, match="squash takes the sparsecore.Sparsifier of a model, got Sequential"):
        squash(mlp_24())


def test_is_two_four():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert is_two_four(weight)
    weight[0, 1] = 4.0
    assert not is_two_four(weight)
    assert not is_two_four(torch.zeros(2, 6))  # groups of 4 do not fit
    assert not is_two_four(torch.zeros(2, 4, 3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA; this one has CUDA")
def test_to_semi_structured_without_cuda_leaves_the_model_unchanged():
    model = squash(two_four_sparsifier(mlp_24()))
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    params = [(p, p.detach().clone()) for p in model.parameters()]
    result = to_semi_structured(model)
    assert result.model is model and result.converted == []
    assert result.reason == ("to_sparse_semi_structured needs CUDA, and torch sees no CUDA device; "
                             "the model is unchanged")
    assert result.skipped == {
        "0": "the weight is on cpu; semi-structured kernels need CUDA",
        "2": "the weight is not 2:4 along in_features (more than 2 nonzeros in some group of 4)"}
    assert all(p is q for p, (q, _) in zip(model.parameters(), params))
    assert all(torch.equal(p, before) for p, (_, before) in zip(model.parameters(), params))


def test_to_semi_structured_leaves_a_model_on_the_cpu_unchanged():
    model = squash(two_four_sparsifier(mlp_24()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = to_semi_structured(model)
    assert result.converted == [] and "CUDA" in result.reason and result.reason.endswith("the model is unchanged")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_to_semi_structured_refuses_an_attached_sparsifier():
    sparsifier = two_four_sparsifier(mlp_24())
    with pytest.raises(ExportError, match="to_semi_structured: the model still has a sparsifier attached; call "
                                          "sparsecore.export.squash"):
        to_semi_structured(sparsifier.model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_semi_structured_on_cuda():
    model = squash(two_four_sparsifier(mlp_24())).half().cuda().eval()
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected = model(x)
    result = to_semi_structured(model)
    if result.converted != ["0", "2"]:
        pytest.fail(f"nothing converted on this GPU: {result.skipped}")
    assert type(model[0].weight.data).__name__.startswith("SparseSemiStructuredTensor")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-2, atol=1e-2)


def test_export_onnx_refuses_an_attached_sparsifier(tmp_path):
    sparsifier = make_sparsifier("static")
    with pytest.raises(ExportError, match="export_onnx: the model still has a sparsifier attached"):
        export_onnx(sparsifier.model, tmp_path / "m.onnx", (torch.randn(1, 16),))


def test_export_onnx_names_what_is_missing(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ExportError, match=r"ONNX export needs onnxscript, not installed \(pip install 'sparsecore\[export\]'\)"):
        export_onnx(mlp_24(), tmp_path / "m.onnx", (torch.randn(1, 128),))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="onnx is not installed")
def test_export_onnx_of_the_squashed_model_computes_the_same(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    sparsifier = Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="static", density=0.2, seed=0)
    masks = {f"{name}.weight": layer.mask.clone() for name, layer in sparsifier.layers.items()}
    model = squash(sparsifier)
    model.train()
    x = torch.randn(2, 4, 6, 6)
    path = export_onnx(model, tmp_path / "m.onnx", (x,))
    assert model.training  # left in the mode it was in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one self-contained file
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for key, mask in masks.items():
        assert np.array_equal(weights[key] != 0, (model.state_dict()[key] != 0).numpy())
        assert int((weights[key] != 0).sum()) <= int(mask.sum())
    (output,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(output, model.eval()(x).numpy(), rtol=1e-5, atol=1e-5)
