"""GPU benchmark: block-sparse (Triton) and 2:4 Linear vs cuBLAS dense and masked dense.

1. Layer fwd+bwd (and forward alone): bf16 weight 4096×4096, 8192 tokens, densities
   0.5 → 0.01, blocks 32/64/128, 2:4 at 0.5. Reports time, speed-up over cuBLAS
   dense, fraction of the ideal 1/d (speed-up × d) and TFLOP/s on the non-zeros.
2. MLP training step (4 layers 4096→4096, 8192 tokens, bf16, AdamW) at d = 0.1 with
   block-64 masks through sparsecore + the plugin, vs dense and masked dense.

CUDA events, warm-up (includes Triton autotuning), median of ``--reps`` timings.

Usage::

    python benchmarks/kernels/gpu_layer.py [--reps 20] [--markdown]
    TRITON_INTERPRET=1 python benchmarks/kernels/gpu_layer.py --smoke   # CPU logic check, tiny shapes
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from sparse_kernels_cuda import BlockPlan, SemiStructuredBackend, block_linear, expand_block_mask, n_m_mask


def timed(fn, reps: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after two warm-ups."""
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def fwd_bwd(linear, x, w, g):
    """A closure running forward + backward (input and weight gradients) of ``linear``."""
    def run():
        xr = x.detach().requires_grad_()
        wr = w.detach().requires_grad_()
        linear(xr, wr).backward(g)
    return run


def layer_table(n: int, tokens: int, densities, blocks, dtype, device, reps: int) -> list[dict]:
    """Rows of the layer benchmark."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, n, generator=gen).to(device, dtype)
    x = torch.randn(tokens, n, generator=gen).to(device, dtype)
    g = torch.randn(tokens, n, generator=gen).to(device, dtype)
    flops = 3 * 2 * tokens * n * n  # fwd + dX + dW
    dense_ms = timed(fwd_bwd(lambda a, b: F.linear(a, b), x, w, g), reps, device)
    dense_fwd = timed(lambda: F.linear(x, w), reps, device)
    rows = [{"kernel": "cuBLAS dense", "density": 1.0, "ms": dense_ms, "fwd_ms": dense_fwd}]
    for d in densities:
        for b in blocks:
            bm = torch.rand(n // b, n // b, generator=gen) < d
            mask = expand_block_mask(bm, b).to(device)
            actual = bm.float().mean().item()
            plan = BlockPlan.from_mask(mask, b)
            ms = timed(fwd_bwd(lambda a, ww, p=plan: block_linear(a, ww, None, p), x, w, g), reps, device)
            fwd = timed(lambda p=plan: block_linear(x, w, None, p), reps, device)
            rows.append({"kernel": f"triton block {b}", "density": actual, "ms": ms, "fwd_ms": fwd})
        mask = (torch.rand(n, n, generator=gen) < d).to(device)
        masked = timed(fwd_bwd(lambda a, ww, m=mask: F.linear(a, ww * m), x, w, g), reps, device)
        rows.append({"kernel": "masked dense", "density": d, "ms": masked,
                     "fwd_ms": timed(lambda m=mask: F.linear(x, w * m), reps, device)})
    be = SemiStructuredBackend()
    if 0.5 in densities and be.is_available() and be.supports((n, n), dtype, "2:4", device):
        mask = n_m_mask(w.float().abs().cpu()).to(device)
        ms = timed(fwd_bwd(lambda a, ww: be.linear(a, ww, None, mask), x, w, g), reps, device)
        rows.append({"kernel": "2:4 (fwd sparse, bwd dense)", "density": 0.5, "ms": ms,
                     "fwd_ms": timed(lambda: be.linear(x, w, None, mask), reps, device)})
        plan = be.plan(mask)  # the plugin's path: the weight is compressed once per weight version, not per call
        ms = timed(fwd_bwd(lambda a, ww: be.linear(a, ww, None, plan), x, w, g), reps, device)
        rows.append({"kernel": "2:4 compressed once per weight version", "density": 0.5, "ms": ms,
                     "fwd_ms": timed(lambda: be.linear(x, w, None, plan), reps, device)})
    for r in rows:
        r["speedup"] = dense_ms / r["ms"]
        r["fwd_speedup"] = dense_fwd / r["fwd_ms"]
        r["ideal_frac"] = r["speedup"] * r["density"]
        r["tflops_nnz"] = flops * r["density"] / (r["ms"] * 1e-3) / 1e12
    return rows


def mlp_step(n: int, tokens: int, layers: int, density: float, block: int, dtype, device, reps: int) -> list[dict]:
    """Training step of an MLP: dense vs masked dense (sparsecore) vs the plugin (block-sparse)."""
    import sparsecore
    from sparse_kernels_cuda import KernelPlugin

    def model_opt():
        torch.manual_seed(0)
        mods = []
        for _ in range(layers):
            mods += [nn.Linear(n, n), nn.ReLU()]
        model = nn.Sequential(*mods).to(device, dtype)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, n, generator=gen).to(device, dtype)

    def step(model, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            model(x).float().pow(2).mean().backward()
            opt.step()
        return run

    rows = []
    model, opt = model_opt()
    rows.append({"variant": "dense", "ms": timed(step(model, opt), reps, device)})
    for plugin in (False, True):
        model, opt = model_opt()
        plugins = [KernelPlugin(backend="triton-block")] if plugin else []
        sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=density, plugins=plugins,
                                   dense_first_layer=False, dense_last_layer=False)
        masks = {}
        for name, layer in sp.layers.items():
            bm = torch.rand(n // block, n // block, generator=gen) < density
            masks[name] = expand_block_mask(bm, block).to(device)
        sp.set_masks(masks)
        ms = timed(step(model, opt), reps, device)
        used = sorted(set(plugins[0].summary().values())) if plugin else ["masked-dense"]
        rows.append({"variant": f"{'plugin' if plugin else 'masked dense'} ({', '.join(map(str, used))})", "ms": ms})
        sp.remove()
    for r in rows:
        r["speedup"] = rows[0]["ms"] / r["ms"]
    return rows


def main() -> None:
    """Run both benchmarks and print tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device (checks the script)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        n, tokens, densities, blocks, reps, layers = 64, 32, [0.5, 0.25], [16, 32], 1, 2
        mlp_block = 16
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA GPU (use --smoke with TRITON_INTERPRET=1 to check the script on CPU)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        n, tokens, densities, blocks, reps, layers = 4096, 8192, [0.5, 0.2, 0.1, 0.05, 0.02, 0.01], [32, 64, 128], args.reps, 4
        mlp_block = 64
    import triton

    info = f"torch {torch.__version__}, triton {triton.__version__}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        info += f", {p.name} ({p.multi_processor_count} SMs), CUDA {torch.version.cuda}, TF32 matmul={torch.backends.cuda.matmul.allow_tf32}"
    print(f"# {info}; dtype {dtype}; weight {n}x{n}, tokens {tokens}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    rows = layer_table(n, tokens, densities, blocks, dtype, device, reps)
    print("| kernel | density | fwd+bwd ms | speed-up vs dense | fraction of ideal (×d) | TFLOP/s on nnz | fwd ms | fwd speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['density']:.3f} | {r['ms']:.3f} | {r['speedup']:.2f}× | {r['ideal_frac']:.0%} | "
              f"{r['tflops_nnz']:.1f} | {r['fwd_ms']:.3f} | {r['fwd_speedup']:.2f}× |")
    print()
    print(f"MLP step: {layers}×Linear({n},{n})+ReLU, {tokens} tokens, AdamW, d=0.1, block {mlp_block}")
    print("| variant | step ms | speed-up vs dense |")
    print("|---|---|---|")
    for r in mlp_step(n, tokens, layers, 0.1 if not args.smoke else 0.5, mlp_block, dtype, device, reps):
        print(f"| {r['variant']} | {r['ms']:.2f} | {r['speedup']:.2f}× |")


if __name__ == "__main__":
    main()
