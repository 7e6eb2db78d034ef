"""A small byte-level GPT (decoder-only transformer) for the ``python-stdlib`` language-model workload."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CausalSelfAttention", "GPTBlock", "TinyGPT"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate ``nn.Linear`` projections.

    ``q``, ``k``, ``v`` and ``out`` are plain linear layers called in the
    forward, so a sparsifier makes each of them a sparse layer of its own
    (``nn.MultiheadAttention`` would hide them in one fused call).

    Args:
        dim: Model width.
        heads: Attention heads; must divide ``dim``.

    Raises:
        ValueError: If ``heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attends every position of ``x`` (``(N, T, dim)``) to itself and the positions before it."""
        n, t, dim = x.shape

        def split_heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, self.heads, dim // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x)),
                                           is_causal=True)
        return self.out(y.transpose(1, 2).reshape(n, t, dim))


class GPTBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` with a GELU MLP.

    Args:
        dim: Model width.
        heads: Attention heads.
        mlp_ratio: Hidden width of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, mlp_ratio * dim)
        self.proj = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block to ``(N, T, dim)`` activations."""
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """A byte-level GPT: token and position embeddings, pre-norm blocks, a final norm and a tied output head.

    The output head multiplies by the token embedding's weight (weight tying,
    as in GPT-2), so every ``nn.Linear`` of the model is an attention
    projection (``q``, ``k``, ``v``, ``out``) or an MLP weight (``fc``,
    ``proj``): those are what a :class:`~sparsecore.Sparsifier` makes sparse.
    The embeddings (and with them the head) and the layer norms stay dense by
    the engine's own rules (``nn.Embedding`` and ``nn.LayerNorm`` are not
    sparse layer types), with no ``exclude`` needed.

    The default size (``gpt-tiny``): 128 wide, 2 blocks of 4 heads, 128 bytes
    of context, about 0.45 M parameters (0.39 M of them in the linear layers).
    Weights are initialised as in GPT-2: normal with std 0.02, the residual
    projections (``attn.out``, ``proj``) scaled by ``1/sqrt(2 * depth)``.

    Args:
        vocab_size: Number of token values (256 for bytes).
        context: Longest input sequence.
        dim: Model width.
        depth: Number of blocks.
        heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.

    Returns from ``forward``: logits of shape ``(N, vocab_size, T)``: the
    class dimension is dim 1, the layout ``F.cross_entropy`` takes with
    ``(N, T)`` targets, so the classification losses of a harness work unchanged.
    """

    def __init__(self, vocab_size: int = 256, context: int = 128, dim: int = 128, depth: int = 2, heads: int = 4,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(GPTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("attn.out", ".proj")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(N, vocab_size, T)`` for int64 tokens ``(N, T)`` with ``T <= context``.

        Raises:
            ValueError: If the input is not 2-d integer tokens or is longer than the context.
        """
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"TinyGPT takes (N, T) integer tokens, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.context:
            raise ValueError(f"input of {tokens.shape[1]} tokens is longer than the context of {self.context}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm(x), self.token_embedding.weight)
        return logits.transpose(1, 2)
