"""``model/host_collectives.py``: the same sums and gathers as gloo through shared memory,
bit for bit on two ranks, under ranks that arrive at different times; DDP through it trains
the same weights; ranks on several nodes are refused; a silent peer times out by name."""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from model.host_collectives import HostGroup
from tests.model.host_worker import Towers, collectives_main, ddp_main, failures_main


def _spawn(main, world: int, tmp_path: Path, *extra: object) -> None:
    mp.spawn(main, args=(world, str(tmp_path / "init"), str(tmp_path), *extra), nprocs=world)


def _arena_files() -> set[str]:
    return set(glob.glob("/dev/shm/clipflow-host-*"))


@pytest.mark.parametrize("world", [2, 3])
def test_collectives_equal_gloo_with_ranks_arriving_at_different_times(tmp_path, world) -> None:
    before = _arena_files()
    _spawn(collectives_main, world, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    kinds = {kind for kind, _, _ in ranks[0]["results"]}
    assert kinds == {"sum", "gather", "scatter"}
    # 4 KiB slots: collectives of up to 40 KB went in chunks, more collectives than calls.
    assert ranks[0]["collectives"] > 200
    for r in ranks:
        for i, (kind, by_gloo, by_host) in enumerate(r["results"]):
            assert by_host.shape == by_gloo.shape, (i, kind)
            if world == 2 or kind == "gather":  # a two-term sum is exact in any order
                assert torch.equal(by_host, by_gloo), (i, kind)
            else:  # gloo adds three terms in its own order
                assert torch.allclose(by_host, by_gloo, rtol=1e-6, atol=1e-6), (i, kind)
    # Every rank holds the same sums and gathers, bit for bit.
    for i, (kind, _, mine) in enumerate(ranks[0]["results"]):
        if kind != "scatter":  # (a reduce-scatter gives each rank its own block)
            assert all(torch.equal(r["results"][i][2], mine) for r in ranks), (i, kind)
    assert _arena_files() == before  # unlinked once every rank had opened them


def test_ddp_through_shared_memory_trains_the_same_weights_as_gloo(tmp_path) -> None:
    _spawn(ddp_main, 2, tmp_path)
    torch.manual_seed(0)
    initial = Towers().state_dict()["image.0.weight"]
    for r in range(2):
        weights = torch.load(tmp_path / f"ddp{r}.pt", weights_only=True)
        for local_loss in (True, False):
            gloo = weights[f"gloo, local_loss {local_loss}"]
            host = weights[f"host, local_loss {local_loss}"]
            assert gloo.keys() == host.keys()
            assert [k for k, v in gloo.items() if not torch.equal(v, host[k])] == [], local_loss
            assert not torch.equal(host["image.0.weight"], initial)  # training moved it


def test_refused_across_nodes_and_a_silent_peer_times_out_by_rank(tmp_path) -> None:
    _spawn(failures_main, 2, tmp_path)
    for r in range(2):
        assert "must run on one host" in (tmp_path / f"refused{r}.txt").read_text()
    assert "rank 1 sent nothing for 1 s" in (tmp_path / "error.txt").read_text()


def test_refused_off_linux(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ValueError, match="needs Linux .* not darwin: set it false"):
        HostGroup()
