"""Helpers of the snip-baseline tests: a tiny MLP, its data, and a hand-written SNIP score."""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (16, 32, 24, 4)  # sparse layers "0" (512), "2" (768), "4" (96): 1376 weights
NUMELS = {"0": 512, "2": 768, "4": 96}


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Linear(16, 32) - ReLU - Linear(32, 24) - ReLU - Linear(24, 4), seeded."""
    g = torch.Generator().manual_seed(seed)
    i, h1, h2, o = WIDTHS
    model = nn.Sequential(nn.Linear(i, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, o))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.to(dtype)


def make_batch(seed: int = 1, n: int = 8, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of ``n`` inputs for :func:`make_mlp` and labels in ``0..3``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, WIDTHS[0], generator=g, dtype=dtype), torch.randint(0, WIDTHS[-1], (n,), generator=g)


def reference_scores(model: nn.Sequential, batches) -> dict[str, torch.Tensor]:
    """|w * dL/dw| for the MLP's Linear weights, by a hand-written forward and loss.

    The loss is the mean negative log-likelihood of log-softmax; with several
    batches the gradients are averaged.
    """
    linears = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    grads = {name: torch.zeros_like(m.weight) for name, m in linears}
    for x, y in batches:
        ws = {name: m.weight.detach().clone().requires_grad_(True) for name, m in linears}
        h = x
        for k, (name, m) in enumerate(linears):
            h = h @ ws[name].t() + m.bias.detach()
            if k < len(linears) - 1:
                h = torch.where(h > 0, h, torch.zeros_like(h))
        logp = h - torch.logsumexp(h, dim=1, keepdim=True)
        loss = -logp[torch.arange(len(y)), y].sum() / len(y)
        loss.backward()
        for name in grads:
            grads[name] += ws[name].grad
    return {name: (m.weight.detach() * grads[name] / len(batches)).abs() for name, m in linears}


def top_k_positions(scores: dict[str, torch.Tensor], k: int) -> set[tuple[str, int]]:
    """The ``k`` largest scores over all tensors, ties by (model order, flat index), as (name, index) pairs."""
    items = [(float(v), order, i, name) for order, (name, s) in enumerate(scores.items())
             for i, v in enumerate(s.reshape(-1).tolist())]
    items.sort(key=lambda t: (-t[0], t[1], t[2]))
    return {(name, i) for _, _, i, name in items[:k]}


def boundary_gap(scores: dict[str, torch.Tensor], k: int) -> float:
    """Relative gap between the k-th and (k+1)-th largest score (so rounding cannot reorder them)."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()]).sort(descending=True).values
    return float((flat[k - 1] - flat[k]) / flat[k - 1])


def positions(masks: dict[str, torch.Tensor]) -> set[tuple[str, int]]:
    """Kept entries of a set of masks as (name, flat index) pairs."""
    return {(name, int(i)) for name, m in masks.items() for i in m.reshape(-1).nonzero().squeeze(1).tolist()}
