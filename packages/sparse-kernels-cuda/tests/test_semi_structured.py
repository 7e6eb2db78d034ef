"""The 2:4 semi-structured backend: the compressed weight is built once per mask and weight version.

The CPU tests replace the device-support check and the compression (cuSPARSELt needs CUDA sm80+) by fakes that
record every build; the GPU test runs the real backend.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore
from sparse_kernels_cuda import KernelPlugin
from sparse_kernels_cuda.backends import semi_structured
from sparse_kernels_cuda.backends.semi_structured import SemiStructuredBackend, SemiStructuredPlan


@pytest.fixture
def fake_device(monkeypatch):
    """Pretend the device runs 2:4 kernels; the fake compression keeps the dense matrix and records each build."""
    builds: list[torch.Tensor] = []

    def fake_compress(dense):
        assert dense.movedim(1, -1).reshape(-1, 4).count_nonzero(dim=1).max() <= 2  # what cuSPARSELt requires
        builds.append(dense.clone())
        return dense.clone()

    monkeypatch.setattr(semi_structured, "compress", fake_compress)
    monkeypatch.setattr(SemiStructuredBackend, "is_available", lambda self: True)
    monkeypatch.setattr(SemiStructuredBackend, "supports",
                        lambda self, shape, dtype, pattern, device: pattern == "2:4")
    return builds


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    return sparsecore.selection.top_per_group(weight.abs(), sparsecore.selection.NMPattern(2, 4))


def test_the_plan_compresses_once_per_weight_version(fake_device, helpers):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 16, generator=gen, requires_grad=True)
    mask = two_four_mask(weight.detach())
    backend = SemiStructuredBackend()
    plan = backend.plan(mask)
    x = torch.randn(5, 16, generator=gen)
    g = torch.randn(5, 8, generator=gen)
    y, dx, dw, _ = helpers.run_backend(backend.linear, x, weight, None, plan, g)
    ry, rdx, rdw, _ = helpers.reference_linear(x, weight, mask, None, g)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(dx, rdx)
    torch.testing.assert_close(dw, rdw)
    assert not dw[~mask].any()
    # run_backend works on fresh copies of the weight: same values, another tensor, so one build each
    assert plan.builds == 1 and len(fake_device) == 1
    with torch.no_grad():
        for _ in range(3):
            backend.linear(x, weight, None, plan)
    assert plan.builds == 2  # the parameter itself: built once for three calls
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place change moves the version counter
        y = backend.linear(x, weight, None, plan)
    assert plan.builds == 3
    torch.testing.assert_close(fake_device[-1], weight.detach() * mask)
    torch.testing.assert_close(y, x @ (weight.detach() * mask).t())


def test_a_bare_mask_compresses_at_every_call(fake_device):
    weight = torch.randn(8, 16)
    mask = two_four_mask(weight)
    for _ in range(2):
        SemiStructuredBackend().linear(torch.randn(3, 16), weight, None, mask)
    assert len(fake_device) == 2


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))


def test_a_two_four_run_uses_the_backend_and_builds_once_per_mask_and_weight_version(fake_device):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plugin = KernelPlugin(backend="2:4")
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="set", pattern="2:4", total_steps=100, seed=0,
                                       plugins=[plugin], update_every=1000)
    layers = list(sparsifier.layers)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 64, generator=gen), torch.randint(0, 8, (16,), generator=gen)

    with torch.no_grad():
        first = model(x)
        again = model(x)
    assert plugin.summary() == dict.fromkeys(layers, "2:4")
    assert len(fake_device) == len(layers)  # inference: one build per layer, not one per forward
    torch.testing.assert_close(first, again)

    for step in range(3):  # two forwards per step (gradient accumulation): one build per layer per weight version
        optimizer.zero_grad()
        for half in (x[:8], x[8:]):
            nn.functional.cross_entropy(model(half), y[:8]).backward()
        assert len(fake_device) == len(layers) * (step + 1)  # step 0 still sees the weights of the inference
        optimizer.step()

    sparsifier.update_topology(0.3)  # new masks: new plans, built at the next forward
    with torch.no_grad():
        out = model(x)
    assert len(fake_device) == len(layers) * 4
    for name, built in zip(layers, fake_device[-len(layers):], strict=True):
        layer = sparsifier.layers[name]
        torch.testing.assert_close(built, layer.weight.detach() * layer.mask)
    reference = x
    for module in model:
        reference = module(reference) if not isinstance(module, nn.Linear) else \
            nn.functional.linear(reference, module.weight.detach() * sparsifier.layers[_name(model, module)].mask,
                                 module.bias)
    torch.testing.assert_close(out, reference)


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_children() if m is module)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_four_training_on_the_gpu_runs_the_real_backend_and_reuses_the_compressed_weight():
    if not SemiStructuredBackend().is_available():
        pytest.skip("needs a CUDA device with compute capability 8.0 or newer")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).cuda().half()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    plugin = KernelPlugin(backend="2:4")
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="static", pattern="2:4", total_steps=10,
                                       seed=0, plugins=[plugin])
    x = torch.randn(128, 256, device="cuda", dtype=torch.half)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).float().pow(2).mean().backward()
        optimizer.step()
    with torch.no_grad():
        out, again = model(x), model(x)
    assert plugin.summary() == dict.fromkeys(sparsifier.layers, "2:4")
    for name, kernel in plugin.kernels.items():
        plan = kernel.plan("2:4")
        assert isinstance(plan, SemiStructuredPlan)
        assert plan.builds == 3, name  # two training steps and one inference weight version
    reference = nn.functional.linear(torch.relu(nn.functional.linear(
        x, model[0].weight * sparsifier.layers["0"].mask, model[0].bias)),
        model[2].weight * sparsifier.layers["2"].mask, model[2].bias)
    torch.testing.assert_close(out, reference, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(out, again)
