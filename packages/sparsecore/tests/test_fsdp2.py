"""FSDP2 (``fully_shard``) on 2 gloo ranks: masks sharded like their weights, every mask and weight equal to the
unsharded run's, and sparsifier checkpoints through ``torch.distributed.checkpoint``."""

from __future__ import annotations

import fsdp_worker
import pytest
import torch
import torch.distributed as dist

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]

SHARD0 = "(Shard(dim=0),)"


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    """Every scenario of fsdp_worker.SCENARIOS trained on the 2-rank sharded model (one spawn for all)."""
    return fsdp_worker.spawn("train", tmp_path_factory.mktemp("fsdp") / "runs.pt")


def unsharded(scenario):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks compute with one thread each
    try:
        return fsdp_worker.run(scenario, sharded=False)
    finally:
        torch.set_num_threads(threads)


def assert_same_snapshots(got, expected):
    assert len(got) == len(expected) == fsdp_worker.STEPS + 1
    for when, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert list(g) == list(e)
        for name in e:
            assert torch.equal(g[name]["mask"], e[name]["mask"]), f"mask of {name!r} differs after step {when}"
            assert torch.equal(g[name]["weight"], e[name]["weight"]), f"weight of {name!r} differs after step {when}"


@pytest.mark.parametrize("scenario", list(fsdp_worker.SCENARIOS))
def test_sharded_run_equals_unsharded_run(sharded_runs, scenario):
    got, expected = sharded_runs[scenario], unsharded(scenario)
    # masks are DTensors sharded exactly like their weights
    assert got["placements"] == {name: [SHARD0, SHARD0] for name in expected["nnz"]}
    # initial masks, every topology update and every weight match the unsharded run bit for bit
    assert_same_snapshots(got["snapshots"], expected["snapshots"])
    assert got["updates"] == expected["updates"]
    assert got["nnz"] == expected["nnz"]
    # optimizer state (momentum buffers, Adam moments, grown entries reset) matches as well
    assert list(got["optimizer_state"]) == list(expected["optimizer_state"])
    for name, state in expected["optimizer_state"].items():
        assert sorted(got["optimizer_state"][name]) == sorted(state) != []
        for key, value in state.items():
            assert torch.equal(got["optimizer_state"][name][key], value), f"{key} of {name!r} differs"


@pytest.mark.parametrize("scenario", [s for s in fsdp_worker.SCENARIOS if s != "static"])
def test_topology_changes_in_every_update(sharded_runs, scenario):
    """The comparison above is between runs whose masks really move: 3 updates, each moving weights."""
    updates = sharded_runs[scenario]["updates"]
    assert len(updates) == 3
    for update in updates:
        assert sum(pruned for pruned, _, _ in update.values()) > 0
        assert sum(grown for _, grown, _ in update.values()) > 0


def test_dcp_checkpoint_round_trip(tmp_path):
    result = fsdp_worker.spawn("checkpoint", tmp_path / "checkpoint.pt")
    # sparsifier.state_dict() holds DTensor masks placed like their weights
    assert result["mask_layouts"] == {name: ("DTensor", SHARD0, SHARD0) for name in result["saved"]}
    assert result["history"] == [2, 4, 6]
    saved, before, loaded = result["saved"], result["before_load"], result["loaded"]
    # the fresh run (another seed) started from other masks and weights ...
    assert any(not torch.equal(before[n]["mask"], saved[n]["mask"]) for n in saved)
    # ... and after loading holds exactly the saved ones, step and generator included
    for name in saved:
        assert torch.equal(loaded["snapshot"][name]["mask"], saved[name]["mask"])
        assert torch.equal(loaded["snapshot"][name]["weight"], saved[name]["weight"])
    assert loaded["step"] == 4 and loaded["generator"]
    # resuming continues exactly: same update at step 6, same masks and weights after step 7
    assert result["restored_history"] == [6]
    for name, expected in result["continued"].items():
        assert torch.equal(result["restored_continued"][name]["mask"], expected["mask"])
        assert torch.equal(result["restored_continued"][name]["weight"], expected["weight"])
    # a state with whole masks (saved by an unsharded run) loads into the sharded run, masks sharded on load
    assert result["from_whole"] == {name: ("DTensor", SHARD0, True) for name in saved}
    # set_masks with a whole mask: the layer becomes dense, its mask stays sharded like its weight
    changed = result["set_masks"]
    assert changed["nnz"] == changed["capacity"] == changed["before"] + changed["grown"] and changed["grown"] > 0
    assert changed["layout"] == ("DTensor", SHARD0)
