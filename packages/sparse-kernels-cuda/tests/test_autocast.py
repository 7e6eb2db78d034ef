"""The plugin under CPU bfloat16 autocast, for every backend path.

Under autocast every layer runs masked dense (no backend has a CPU bf16 sparse
product), which is exactly the module's own autocast forward: outputs and
gradients equal those of the same model without the plugin, bit for bit.
Against the fp32 run they differ by bfloat16 rounding: ``u = 2**-8`` per
rounding, two operand casts and one result rounding per product, so outputs
are compared at ``rtol = 2**-6`` (four roundings) and gradients, which add
the rounding of the incoming gradient and of the previous layer's output, at
``2**-5`` in relative norm.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore

from sparse_kernels_cuda import KernelPlugin, n_m_mask

BF16 = torch.bfloat16

# (forced backend, mask pattern, backend used outside autocast on a CPU-only machine)
PATHS = {
    "auto": ("auto", "unstructured", None),
    "masked-dense": ("masked-dense", "unstructured", "masked-dense"),
    "csr": ("csr", "unstructured", "csr"),
    "triton-block": ("triton-block", "block", "triton-block"),
    "2:4": ("2:4", "2:4", "masked-dense"),  # cuSPARSELt needs CUDA: masked dense on CPU
}


def _pair(plugins, pattern):
    """Two 64×64 Linear layers with masks of ``pattern`` (unstructured, whole 16×16 blocks, or 2:4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    block = (16, 16) if pattern == "block" else None
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.25 if block else 0.15, seed=3,
                               plugins=plugins, block=block)
    if pattern == "2:4":
        sp.set_masks({name: n_m_mask(layer.weight.detach().abs()) for name, layer in sp.layers.items()})
    return model, sp


def _step(model, x, autocast):
    model.zero_grad()
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        y = model(x)
    y.float().square().mean().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("path", PATHS)
def test_autocast_runs_masked_dense_on_every_backend_path(path):
    backend, pattern, outside = PATHS[path]
    if backend == "triton-block":
        pytest.importorskip("triton", reason="the triton-block path needs triton (extra 'triton')")
    plugin = KernelPlugin(backend=backend)
    model, sp = _pair([plugin], pattern)
    ref_model, _ = _pair([], pattern)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))

    y, grads = _step(model, x, autocast=True)
    ref_y, ref_grads = _step(ref_model, x, autocast=True)
    assert y.dtype == BF16 and all(g.dtype == torch.float32 for g in grads)
    assert set(plugin.summary().values()) == {"masked-dense"}
    assert plugin._dispatcher.timings == {} and plugin._dispatcher.decisions == {}
    assert torch.equal(y, ref_y)
    for g, ref_g in zip(grads, ref_grads):
        assert torch.equal(g, ref_g)

    y32, grads32 = _step(model, x, autocast=False)
    torch.testing.assert_close(y.float(), y32, rtol=2.0 ** -6, atol=2.0 ** -6 * float(y32.abs().max()))
    # weight gradients on the mask only: masked dense leaves the rest to the engine's step, CSR returns zeros there
    masks = {id(layer.weight): layer.mask for layer in sp.layers.values()}
    for p, g, g32 in zip(model.parameters(), grads, grads32):
        keep = masks.get(id(p), torch.ones_like(g, dtype=torch.bool))
        assert float((g - g32)[keep].norm() / g32[keep].norm()) <= 2.0 ** -5
    # outside autocast the layers dispatch again: the forced backend where it runs, a measured choice for auto
    if outside is None:
        assert plugin._dispatcher.decisions and all(k.dtype == torch.float32 for k in plugin._dispatcher.decisions)
    else:
        assert set(plugin.summary().values()) == {outside}
    assert all(torch.count_nonzero(layer.weight.detach()[~layer.mask]) == 0 for layer in sp.layers.values())
