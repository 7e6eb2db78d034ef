"""Which weights of a transformer become sparse, and why every other parameter stays dense.

The default: the attention and feed-forward (MLP) projections inside the
transformer blocks are sparse, GPT-2's fused ``Conv1D`` projections included;
embeddings, the output layer (``lm_head``, often tied to the input
embeddings), task heads outside the blocks, norms and biases stay dense.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from sparsecore.errors import ConfigurationError
from sparsecore.layer_selection import Candidate, candidates
from sparsecore.layers import DEFAULT_LAYER_TYPES
from sparsecore.sparsifier import unwrap_model

#: Name parts that mark a projection inside a block as part of the attention.
_ATTENTION_PARTS = ("attn", "attention", "query", "key", "value", "q_proj", "k_proj", "v_proj", "o_proj", "qkv")


@dataclass(frozen=True)
class LayerSelection:
    """The sparse layers of a transformer and the reason for every parameter's treatment.

    Pass :meth:`sparsifier_kwargs` to :class:`sparsecore.Sparsifier` (the
    :class:`~sparsecore_transformers.SparsityCallback` does it for you).

    Attributes:
        include: the sparse layers' names as ``Sparsifier`` names them (exact
            names, escaped as glob patterns), in model order.
        exclude: the layers of the selected types that stay dense.
        layer_types: the module types to consider: the engine's defaults,
            transformers' ``Conv1D``, and ``nn.Embedding`` when embeddings are asked for.
        sparse: parameter name → why it is sparse.
        dense: parameter name → why it stays dense (every other trainable parameter).
        blocks: the transformer blocks found (names of the repeated modules).
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    layer_types: tuple[type[nn.Module], ...]
    sparse: dict[str, str] = field(default_factory=dict)
    dense: dict[str, str] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()

    def sparsifier_kwargs(self) -> dict[str, Any]:
        """``include``, ``exclude`` and ``layer_types`` as keyword arguments of ``Sparsifier``."""
        return {"include": list(self.include), "exclude": list(self.exclude), "layer_types": list(self.layer_types)}

    def table(self) -> str:
        """A Markdown table: every trainable parameter, sparse or dense, and why."""
        rows = ["| parameter | | why |", "|---|---|---|"]
        rows += [f"| `{name}` | sparse | {why} |" for name, why in self.sparse.items()]
        rows += [f"| `{name}` | dense | {why} |" for name, why in self.dense.items()]
        return "\n".join(rows)


def _literal(name: str) -> str:
    """``name`` as a glob pattern matching only itself."""
    return re.sub(r"([*?[])", r"[\1]", name)


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks: the members of the outermost ``nn.ModuleList`` of same-type modules.

    GPT-2's ``transformer.h``, BERT's ``bert.encoder.layer``, Llama's
    ``model.layers``, ``nn.TransformerEncoder``'s ``layers``; a model with an
    encoder and a decoder has two such lists.
    """
    blocks: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name == b or name.startswith(b + ".") for b in blocks):
            continue  # a list inside a block (e.g. T5's sub-layers)
        if len({type(child) for child in module}) == 1 and any(
                isinstance(m, (nn.Linear, Conv1D, nn.MultiheadAttention)) for m in module.modules()):
            prefix = f"{name}." if name else ""
            blocks.extend(f"{prefix}{i}" for i in range(len(module)))
    return blocks


def _param_name(candidate: Candidate) -> str:
    """The parameter's qualified name (an attention's layer name already ends with it)."""
    if candidate.param_name != "weight":
        return candidate.name
    return f"{candidate.name}.weight" if candidate.name else "weight"


def _block_of(name: str, blocks: Sequence[str]) -> str | None:
    return next((b for b in blocks if name.startswith(b + ".")), None)


def _projection_reason(name: str, block: str, kind: str) -> str:
    inner = name[len(block) + 1:].lower().split(".")
    if kind == "attention" or any(part in _ATTENTION_PARTS or "attn" in part or "attention" in part
                                  for part in inner):
        return f"attention projection in block {block!r}"
    return f"feed-forward (MLP) projection in block {block!r}"


def _output_weight(model: nn.Module) -> nn.Parameter | None:
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    weight = getattr(output, "weight", None)
    return weight if isinstance(weight, nn.Parameter) else None


def _dense_reason(param_name: str, module: nn.Module) -> str:
    leaf = param_name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Embedding):
        return "input embeddings: dense unless embeddings=True"
    if "norm" in type(module).__name__.lower() or "norm" in param_name.lower():
        return "normalisation scale or shift: stays dense"
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias: stays dense (sparsecore makes weight matrices sparse)"
    return f"{type(module).__name__}.{leaf} is not a weight of a layer type sparsecore makes sparse"


def transformer_layer_selection(model: nn.Module, *, embeddings: bool = False, output_layer: bool = False,
                                heads: bool = False) -> LayerSelection:
    """The sparse layers of a transformer (blocks' attention and MLP projections) and why the rest stays dense.

    Example:
        ```python
        selection = transformer_layer_selection(model)
        print(selection.table())
        sparsifier = sparsecore.Sparsifier(model, optimizer, "set", density=0.1, **selection.sparsifier_kwargs())
        ```

    Args:
        model: a transformers model (or any model whose blocks sit in an
            ``nn.ModuleList`` of same-type modules); DDP/compile wrappers are looked through.
        embeddings: make the input embeddings (``nn.Embedding``) sparse as well.
        output_layer: make the output layer (``get_output_embeddings()``, e.g. ``lm_head``) sparse.
            A weight tied to the input embeddings is one tensor: it is sparse
            when ``embeddings`` or ``output_layer`` asks for it.
        heads: make the other layers outside the blocks sparse (poolers,
            classifiers, prediction-head transforms).

    Returns:
        The :class:`LayerSelection`.

    Raises:
        ConfigurationError: no transformer blocks found, or nothing left to make sparse.
    """
    model = unwrap_model(model)
    blocks = find_blocks(model)
    if not blocks:
        raise ConfigurationError(f"{type(model).__name__}: no transformer blocks found (an nn.ModuleList of "
                                 "same-type modules holding Linear or Conv1D layers); pass include=/exclude= to "
                                 "Sparsifier yourself")
    types: tuple[type[nn.Module], ...] = (*DEFAULT_LAYER_TYPES, Conv1D)
    if embeddings:
        types = (*types, nn.Embedding)
    found, _ = candidates(model, types)
    output_weight = _output_weight(model)
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    include: list[str] = []
    exclude: list[str] = []
    sparse: dict[str, str] = {}
    dense: dict[str, str] = {}
    for c in found:
        weight = getattr(c.module, c.param_name)
        block = _block_of(c.name, blocks)
        is_output = weight is output_weight
        tied = is_output and id(weight) in embedding_ids
        if isinstance(c.module, nn.Embedding) or tied:
            make_sparse = embeddings or (tied and output_layer)
            why = ("output layer tied to the input embeddings (one tensor)" if tied else "input embeddings") + (
                ": sparse (asked for)" if make_sparse else ": dense unless embeddings=True")
        elif is_output:
            make_sparse = output_layer
            why = "output layer" + (": sparse (asked for)" if make_sparse else ": dense unless output_layer=True")
        elif block is not None:
            make_sparse, why = True, _projection_reason(c.name, block, c.kind)
        else:
            make_sparse = heads
            why = "outside the transformer blocks (pooler, classifier or head)" + (
                ": sparse (asked for)" if make_sparse else ": dense unless heads=True")
        (sparse if make_sparse else dense)[_param_name(c)] = why
        (include if make_sparse else exclude).append(_literal(c.name))
    if not include:
        raise ConfigurationError(f"{type(model).__name__}: the transformer blocks {blocks[:3]}... hold no Linear or "
                                 "Conv1D weight to make sparse")
    owners = {id(getattr(c.module, c.param_name)): _param_name(c) for c in found}
    for name, param in model.named_parameters(remove_duplicate=False):
        if not param.requires_grad or name in sparse or name in dense:
            continue
        owner = owners.get(id(param))
        if owner is None:
            owners[id(param)] = name
            module = model.get_submodule(name.rpartition(".")[0])
            dense[name] = _dense_reason(name, module)
        else:
            state = "sparse" if owner in sparse else "dense"
            (sparse if owner in sparse else dense)[name] = f"the same tensor as {owner} ({state})"
    order = {name: i for i, (name, _) in enumerate(model.named_parameters(remove_duplicate=False))}
    sparse = dict(sorted(sparse.items(), key=lambda item: order[item[0]]))
    dense = dict(sorted(dense.items(), key=lambda item: order[item[0]]))
    return LayerSelection(tuple(include), tuple(exclude), types, sparse, dense, tuple(blocks))
