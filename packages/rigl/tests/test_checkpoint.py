"""Resuming a RigL run is bit-exact, and the same seed gives the same masks."""

from __future__ import annotations

import io

import torch

from sparsecore.testing import make_tiny_model, train_steps


def snapshot(sparsifier) -> dict:
    """Masks, every parameter and the optimizer's state, cloned."""
    optimizer = sparsifier.optimizer
    return {
        "masks": {name: layer.mask.clone() for name, layer in sparsifier.layers.items()},
        "params": {name: p.detach().clone() for name, p in sparsifier.model.named_parameters()},
        "state": [{k: v.clone() for k, v in optimizer.state[p].items()}
                  for group in optimizer.param_groups for p in group["params"]],
        "step": sparsifier.step,
        "history": [(r.step, r.rate, {n: (u.pruned, u.grown, u.nnz) for n, u in r.layers.items()})
                    for r in sparsifier.history if r.reason == "update"],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["masks"].keys() == b["masks"].keys()
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name]), name
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert len(a["state"]) == len(b["state"])
    for sa, sb in zip(a["state"], b["state"]):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def build(rigl, model_seed: int, seed: int):
    model = make_tiny_model(model_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return rigl(model=model, optimizer=optimizer, update_every=4, total_steps=40, seed=seed)


def test_checkpoint_round_trip_is_bit_exact(rigl):
    first = build(rigl, model_seed=0, seed=0)
    train_steps(first, 10)  # updates after steps 4 and 8
    buffer = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(),
                "sparsifier": first.state_dict()}, buffer)
    train_steps(first, 14, seed=5)  # updates after 12, 16, 20, 24
    expected = snapshot(first)
    assert [h[0] for h in expected["history"]] == [4, 8, 12, 16, 20, 24]
    first.remove()

    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = build(rigl, model_seed=1, seed=1)  # another initialisation and masks: the checkpoint decides
    second.model.load_state_dict(state["model"])
    second.optimizer.load_state_dict(state["optimizer"])
    second.load_state_dict(state["sparsifier"])
    train_steps(second, 14, seed=5)
    resumed = snapshot(second)
    assert_same(resumed, expected)
    assert resumed["history"] == expected["history"][2:]


def test_same_seed_same_masks_other_seed_other_masks(rigl):
    runs = []
    for seed in (3, 3, 4):
        sparsifier = build(rigl, model_seed=0, seed=seed)
        train_steps(sparsifier, 30)
        runs.append(snapshot(sparsifier))
        sparsifier.remove()
    assert_same(runs[0], runs[1])
    assert runs[0]["history"] == runs[1]["history"]
    assert any(not torch.equal(runs[0]["masks"][n], runs[2]["masks"][n]) for n in runs[0]["masks"])
