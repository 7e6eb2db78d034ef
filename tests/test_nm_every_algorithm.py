"""N:M across the repository: every in-repo algorithm that lists ``"n:m"`` keeps ``pattern="2:4"`` and ``"1:4"``
exactly after set-up and every optimizer step (so after every update); every other one refuses ``pattern=``
with an error naming itself and the pattern."""

from __future__ import annotations

import pytest
import torch

import sparsecore
from sparsecore import ConfigurationError
from sparsecore.plugins import registry
from sparsecore.testing import make_tiny_model, train_steps
from sparsecore.topology import nm_group_count

STEPS = 12

#: Per in-repo algorithm listing "n:m": options that make its topology change within a short run.
NM_ALGORITHMS = {
    "static": {},
    "set": {"update_every": 2},
    "rigl": {"update_every": 2},
    "sparse-momentum": {"update_every": 2},
    "gmp": {"start_step": 1, "end_step": 9, "update_every": 2},
    "sr-ste": {},
    "asp": {"dense_fraction": 0.25},
}
#: Algorithms whose masks change during the run (the others keep theirs, or change them only once).
DYNAMIC = {"set", "rigl", "sparse-momentum", "gmp", "sr-ste"}
#: In-repo algorithms that cannot keep N per group and refuse N:M runs.
REFUSING = {"dsd", "snip", "swat"}


def in_repo_algorithms() -> dict[str, tuple[str, ...]]:
    """Registered algorithm name -> its ``patterns``, for the repository's distributions."""
    found = {}
    for name in sparsecore.available_algorithms():
        model = make_tiny_model(0)
        try:
            sparsifier = sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm=name,
                                               total_steps=STEPS, **NM_ALGORITHMS.get(name, {}))
        except ConfigurationError:  # an N:M-only algorithm refuses the unstructured default run
            found[name] = tuple(registry.algorithms[name].factory().patterns)
            continue
        found[name] = tuple(getattr(sparsifier.algorithm, "patterns", ("unstructured",)))
        sparsifier.remove()
    return found


def test_the_lists_cover_every_registered_algorithm():
    patterns = in_repo_algorithms()
    assert {name for name, p in patterns.items() if "n:m" in p} == set(NM_ALGORITHMS)
    assert {name for name, p in patterns.items() if "n:m" not in p} == REFUSING


@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
@pytest.mark.parametrize("algorithm", sorted(NM_ALGORITHMS))
def test_every_group_holds_its_count_after_every_step(algorithm, pattern):
    torch.set_num_threads(1)
    n, m = (int(v) for v in pattern.split(":"))
    model = make_tiny_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, pattern=pattern, total_steps=STEPS,
                                       seed=0, **NM_ALGORITHMS[algorithm])
    changes = 0
    try:
        previous = None
        for step in range(STEPS + 1):
            if step:
                train_steps(sparsifier, 1, batch_size=8, seed=step)
            masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
            for name, layer in sparsifier.layers.items():
                counts = layer.mask.movedim(1, -1).reshape(-1, m).sum(1)
                dense_phase = algorithm == "asp" and not sparsifier.algorithm.pruned
                expected = m if dense_phase else nm_group_count(sparsifier, layer)
                assert (counts == expected).all(), (algorithm, pattern, name, step, expected)
            if previous is not None:
                changes += any(not torch.equal(masks[k], previous[k]) for k in masks)
            previous = masks
        for name, layer in sparsifier.layers.items():  # every algorithm ends at exactly N per group
            assert (layer.mask.movedim(1, -1).reshape(-1, m).sum(1) == n).all(), (algorithm, name)
        if algorithm in DYNAMIC:
            assert changes > 0, f"{algorithm}: the masks never changed in {STEPS} steps"
    finally:
        sparsifier.remove()


@pytest.mark.parametrize("algorithm", sorted(REFUSING))
def test_algorithms_that_cannot_keep_n_per_group_refuse_by_name(algorithm):
    model = make_tiny_model(0)
    with pytest.raises(ConfigurationError, match=rf"algorithm '{algorithm}' does not support N:M runs such as "
                                                 r"pattern='2:4'.*drop pattern="):
        sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm=algorithm,
                              pattern="2:4", total_steps=STEPS)
