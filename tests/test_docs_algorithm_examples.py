"""The worked algorithms of the "Writing an algorithm" page and of the README run and do what the text says."""

from __future__ import annotations

import math
import re

import pytest
import torch

import sparsecore
from docs_support import DOCS, ROOT
from sparsecore.testing import make_sparsifier, train_steps

PAGE = DOCS / "writing-algorithms.md"
_BLOCK = re.compile(r'^```python title="(?P<path>[^"]+)"\n(?P<body>.*?)^```$', re.MULTILINE | re.DOTALL)


def _run(code: str, where: str) -> dict:
    namespace: dict = {"__name__": "docs_example_" + re.sub(r"\W", "_", where)}
    exec(compile(code, where, "exec"), namespace)
    return namespace


def _example(path: str) -> dict:
    """The names a titled code block of the page defines, after running it."""
    blocks = {m.group("path"): m.group("body") for m in _BLOCK.finditer(PAGE.read_text(encoding="utf-8"))}
    assert path in blocks, f"docs/writing-algorithms.md has no code block titled {path!r}"
    return _run(blocks[path], f"docs/writing-algorithms.md:{path}")


@pytest.fixture
def sparsifiers():
    """Builds sparsifiers on fresh tiny models and detaches them after the test."""
    built: list[sparsecore.Sparsifier] = []

    def build(algorithm, **kwargs) -> sparsecore.Sparsifier:
        built.append(make_sparsifier(algorithm, **kwargs))
        return built[-1]

    yield build
    for sparsifier in built:
        sparsifier.remove()


def _grown_beat_the_rest(score: torch.Tensor, candidates: torch.Tensor, chosen: torch.Tensor) -> bool:
    """Every chosen entry scores at least as high as every candidate left out."""
    left_out = candidates & ~chosen
    return not bool(left_out.any()) or float(score[chosen].min()) >= float(score[left_out].max())


def test_momentum_growth_configures_the_run(sparsifiers) -> None:
    cls = _example("momentum_growth.py")["MomentumGrowthAlgorithm"]
    sparsifier = sparsifiers(cls(update_every=2), density=0.5, total_steps=6)
    assert sparsifier.distribution == "erk"            # its engine_defaults
    assert sparsifier.policy.mask_gradients is False    # its masking_policy
    assert sparsifier.schedule.update_every == 2
    with pytest.raises(sparsecore.ConfigurationError, match="momentum-growth: prune_rate"):
        cls(prune_rate=0.0)


def test_momentum_growth_grows_where_momentum_is_largest(sparsifiers) -> None:
    algorithm = _example("momentum_growth.py")["MomentumGrowthAlgorithm"](update_every=2)
    sparsifier = sparsifiers(algorithm, density=0.5, total_steps=6)
    train_steps(sparsifier, 1)
    layer = sparsifier.layers["2"]
    momentum = sparsifier.momentum(layer).abs()
    assert float(momentum[~layer.mask].sum()) > 0     # the policy keeps the momentum of zero weights

    chosen = algorithm.select_grow(sparsifier, layer, 10)

    assert int(chosen.sum()) == 10 and not bool((chosen & layer.mask).any())
    assert _grown_beat_the_rest(momentum, ~layer.mask, chosen)


def test_momentum_growth_updates_on_the_engine_schedule(sparsifiers) -> None:
    algorithm = _example("momentum_growth.py")["MomentumGrowthAlgorithm"](update_every=2)
    sparsifier = sparsifiers(algorithm, density=0.5, total_steps=6)
    per_layer = {name: layer.nnz for name, layer in sparsifier.layers.items()}
    train_steps(sparsifier, 6)
    assert [report.step for report in sparsifier.history] == [2, 4]          # none at the final step 6
    assert sparsifier.history[0].rate == pytest.approx(0.3 * (1 + math.cos(math.pi * 2 / 6)) / 2)
    first = sparsifier.history[0].layers
    assert sparsifier.layers["4"].target_density == 1.0 and first["4"].grown == 0    # ERK keeps the small layer dense
    assert first["0"].grown > 0 and first["2"].grown > 0
    assert {name: layer.nnz for name, layer in sparsifier.layers.items()} == per_layer
    assert sparsifier.algorithm_metrics() == {"prune_rate": sparsifier.schedule.rate(6)}


def test_global_momentum_plans_both_halves_over_the_whole_model(sparsifiers) -> None:
    algorithm = _example("global_momentum.py")["GlobalMomentumAlgorithm"]()
    sparsifier = sparsifiers(algorithm, density=0.3, total_steps=8)
    train_steps(sparsifier, 2)
    layers = sparsifier.layers
    masks = {name: layer.mask for name, layer in layers.items()}
    update = sparsecore.TopologyUpdate(rate=0.3, step=sparsifier.step, epoch=None, masks_before=masks)
    n = int(0.3 * sparsifier.nnz)

    plan = algorithm.plan_update(sparsifier, layers, update)

    assert isinstance(plan, sparsecore.UpdatePlan) and set(plan.prune) == set(plan.grow) == set(layers)
    assert sum(int(p.sum()) for p in plan.prune.values()) == n
    assert sum(int(g.sum()) for g in plan.grow.values()) == n
    magnitude = torch.cat([layers[k].weight.detach().abs().flatten() for k in layers])
    active = torch.cat([masks[k].flatten() for k in layers])
    pruned = torch.cat([plan.prune[k].flatten() for k in layers])
    assert not bool((pruned & ~active).any())
    assert _grown_beat_the_rest(-magnitude, active, pruned)          # the globally smallest |w|
    momentum = torch.cat([sparsifier.momentum(layers[k]).abs().flatten() for k in layers])
    grown = torch.cat([plan.grow[k].flatten() for k in layers])
    candidates = ~active | pruned
    assert not bool((grown & ~candidates).any())
    assert _grown_beat_the_rest(momentum, candidates, grown)        # the globally largest |momentum|


def test_global_momentum_moves_capacity_between_layers(sparsifiers) -> None:
    algorithm = _example("global_momentum.py")["GlobalMomentumAlgorithm"]()
    sparsifier = sparsifiers(algorithm, density=0.3, total_steps=8)
    nnz = sparsifier.nnz
    before = {name: layer.nnz for name, layer in sparsifier.layers.items()}
    train_steps(sparsifier, 8, epoch_every=2)
    assert [report.step for report in sparsifier.history] == [2, 4, 6]        # no update after the last epoch
    assert sparsifier.nnz == nnz
    assert {name: layer.nnz for name, layer in sparsifier.layers.items()} != before


def test_readme_plugin_example_registers_and_trains(sparsifiers) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
              if "sparsecore_register_algorithms" in b]
    assert len(blocks) == 1, "README.md: expected one plugin example with sparsecore_register_algorithms"
    namespace = _run(blocks[0], "README.md")
    registered = []
    namespace["sparsecore_register_algorithms"](lambda name, factory: registered.append((name, factory)))
    [(name, factory)] = registered
    assert name == "momentum-growth"

    sparsifier = sparsifiers(factory(), density=0.3, total_steps=8)
    per_layer = {name: layer.nnz for name, layer in sparsifier.layers.items()}
    train_steps(sparsifier, 8, epoch_every=2)
    assert [report.step for report in sparsifier.history] == [2, 4, 6]      # after every epoch but the last
    assert sparsifier.history[0].rate == pytest.approx(0.3 * (1 + math.cos(math.pi * 2 / 8)) / 2)
    assert {name: layer.nnz for name, layer in sparsifier.layers.items()} == per_layer
    assert all(update.pruned > 0 for update in sparsifier.history[0].layers.values())
