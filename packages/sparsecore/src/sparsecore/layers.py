"""The public layer object handed to every hook, and which modules become sparse layers."""

from __future__ import annotations

import torch
from torch import nn

from sparsecore import distributed
from sparsecore.selection import NMPattern

#: Module types made sparse by default, with the short kind name each gets. A
#: ``MultiheadAttention`` contributes its input projection (``in_proj_weight``,
#: or ``q/k/v_proj_weight``); its ``out_proj`` is a Linear of its own.
DEFAULT_LAYER_TYPES: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.MultiheadAttention: "attention",
}

#: Module types that may be made sparse on request (``layer_types=[...]``), with their kind names.
OPT_IN_LAYER_TYPES: dict[type[nn.Module], str] = {
    nn.Embedding: "embedding",
    nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d",
}

#: Why modules of these types stay dense by default (reported in ``Sparsifier.dense_layers``).
DENSE_BY_DEFAULT: dict[type[nn.Module], str] = {
    nn.Embedding: "embeddings stay dense by default; opt in with layer_types=[..., nn.Embedding]",
    nn.EmbeddingBag: "EmbeddingBag is not supported; it stays dense",
    nn.ConvTranspose1d: "transposed convolutions stay dense by default; opt in with layer_types",
    nn.ConvTranspose2d: "transposed convolutions stay dense by default; opt in with layer_types",
    nn.ConvTranspose3d: "transposed convolutions stay dense by default; opt in with layer_types",
    nn.RNNBase: "recurrent weights (weight_ih_l*/weight_hh_l*) are read by fused RNN kernels; they stay dense",
}

#: Parameters of a ``MultiheadAttention`` that are sparse layers (when present).
ATTENTION_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


class SparseLayer:
    """One sparse weight tensor and its mask.

    Plugins read everything they need from here; only the engine changes
    ``mask`` (through a topology update or :meth:`Sparsifier.set_masks`).

    Attributes:
        name: the module's qualified name in the model (``"features.0"``); for
            a parameter other than ``weight`` (attention's ``in_proj_weight``),
            ``"<module>.<parameter>"``.
        module: the ``nn.Module`` that owns the weight.
        param_name: the weight's attribute name on ``module`` (``"weight"``).
        weight: the weight parameter.
        mask: bool tensor shaped like ``weight``; ``True`` = active. For an
            FSDP2-sharded weight (a ``DTensor``) it is a ``DTensor`` sharded
            like the weight, except during ``init_masks`` and a topology
            update, when every hook sees the whole mask.
        target_density: the density the distribution assigned to this layer.
        index: position of the layer in model order (0 = first sparse layer).
        kind: ``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"conv3d"``,
            ``"attention"`` (a MultiheadAttention input projection), or an
            opt-in kind (``"embedding"``, ``"conv_transpose2d"``, ...).
        version: increases by one whenever the mask changes, so kernels can
            cache formats per version.
        block: ``(rows, cols)`` when the engine keeps this layer block-sparse
            (the weight seen as a ``shape[0] x prod(shape[1:])`` matrix), else ``None``.
        pattern: the layer's sparsity pattern, to pass as ``block`` to every
            :mod:`sparsecore.selection` helper: ``None`` (unstructured), the
            block shape (same as ``block``), or a
            :class:`~sparsecore.selection.NMPattern` (``pattern="N:M"`` runs:
            exactly N active weights in every group of M along dim 1).
        forward_bypass_reason: why the model reads this weight without calling
            ``module.forward`` (a ``MultiheadAttention``'s ``out_proj`` and input
            projections), as one line; ``None`` when the forward is called.
            The engine then never asks ``layer_forward`` for the layer, and
            masking the weight is the only way to make it sparse.
    """

    def __init__(self, name: str, module: nn.Module, kind: str, index: int, target_density: float,
                 param_name: str = "weight", forward_bypass_reason: str | None = None) -> None:
        self.name = name
        self.module = module
        self.param_name = param_name
        self.weight: nn.Parameter = getattr(module, param_name)
        self.kind = kind
        self.index = index
        self.target_density = float(target_density)
        self.mask = torch.ones_like(self.weight, dtype=torch.bool)
        self.version = 0
        self.block: tuple[int, int] | None = None
        self.pattern: tuple[int, int] | NMPattern | None = None
        self.forward_bypass_reason = forward_bypass_reason
        #: output positions per sample (H*W for conv2d, 1 for linear), recorded at the first forward.
        self.output_positions: int | None = None

    @property
    def forward_replaceable(self) -> bool:
        """Whether the model calls ``module.forward``, so a replaced forward computes the layer.

        ``False`` exactly when :attr:`forward_bypass_reason` is set.
        """
        return self.forward_bypass_reason is None

    @property
    def capacity(self) -> int:
        """How many weights the layer can hold: the weight's number of elements."""
        return self.weight.numel()

    @property
    def nnz(self) -> int:
        """Number of active weights (summed over the shards of an FSDP2 mask: then a collective)."""
        return distributed.count_nonzero(self.mask)

    @property
    def density(self) -> float:
        """Fraction of active weights, ``nnz / capacity``."""
        return self.nnz / self.capacity

    @property
    def block_size(self) -> int:
        """Weights per block (1 for element-wise layers)."""
        return 1 if self.block is None else self.block[0] * self.block[1]

    def active_count(self, density: float) -> int:
        """Active weights for ``density``: ``round(density * capacity)``, in whole blocks for block layers."""
        return round(density * self.capacity / self.block_size) * self.block_size

    @property
    def shape(self) -> torch.Size:
        """Shape of the weight."""
        return self.weight.shape

    def __repr__(self) -> str:
        return (f"SparseLayer(name={self.name!r}, kind={self.kind!r}, shape={tuple(self.shape)}, "
                f"density={self.density:.4f}, target_density={self.target_density:.4f})")
