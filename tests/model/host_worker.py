"""The per-rank bodies of the shared-memory collectives tests (``test_host_collectives.py``):
each runs the same collectives through gloo and through a ``HostGroup`` and saves both."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.host_collectives import HostGroup, register_ddp_hook
from model.loss import ClipLoss


def _join(rank: int, world: int, init_file: str) -> None:
    os.environ["LOCAL_WORLD_SIZE"] = str(world)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def collectives_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """200 collectives of random sizes (some many slots long) with random pauses between
    them on each rank, through gloo and through a 4 KiB-slot ``HostGroup``."""
    _join(rank, world, init_file)
    try:
        host = HostGroup(slot_bytes=4096)
        plan = random.Random(7)  # the same sizes and kinds on every rank
        pause = random.Random(rank)  # different pauses on each rank
        results = []
        for i in range(200):
            kind = plan.choice(["sum", "gather", "scatter"])
            numel = plan.choice([1, 3, 1000, 1024, 5000])
            g = torch.Generator().manual_seed(1000 * i + rank)
            x = torch.randn(world * numel, generator=g)
            time.sleep(pause.random() * 0.003)
            if kind == "sum":
                by_gloo = x.clone()
                dist.all_reduce(by_gloo)
                by_host = host.all_reduce_sum_(x.clone())
            elif kind == "gather":
                parts = [torch.empty_like(x) for _ in range(world)]
                dist.all_gather(parts, x)
                by_gloo, by_host = torch.stack(parts), host.all_gather(x)
            else:  # the backward of gathering numel values from each rank
                leaf = torch.zeros(numel, requires_grad=True)
                torch.cat(torch.distributed.nn.all_gather(leaf)).backward(x)
                by_gloo, by_host = leaf.grad, host.reduce_scatter_sum(x)
            results.append((kind, by_gloo, by_host))
        torch.save({"results": results, "collectives": host.collectives},
                   Path(out_dir) / f"rank{rank}.pt")  # fmt: skip
        host.close()
    finally:
        dist.destroy_process_group()


class Towers(nn.Module):
    """Two small towers and a temperature: CLIP's shape, in a few parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 8))
        self.text = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 8))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            F.normalize(self.image(x), dim=-1),
            F.normalize(self.text(t), dim=-1),
            self.logit_scale.exp(),
        )


def ddp_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Ten AdamW steps of DDP with the CLIP loss (local and global), once through gloo and
    once through a ``HostGroup`` (DDP's comm hook and the loss's gathers); saves the final
    weights of each."""
    _join(rank, world, init_file)
    try:
        host = HostGroup()
        weights = {}
        for local_loss in (True, False):
            for transport in ("gloo", "host"):
                torch.manual_seed(0)
                towers = Towers()
                ddp = DistributedDataParallel(towers, bucket_cap_mb=0.004)  # several buckets
                group = host if transport == "host" else None
                if group is not None:
                    register_ddp_hook(ddp, group)
                loss_fn = ClipLoss(local_loss=local_loss, host=group)
                optimizer = torch.optim.AdamW(towers.parameters(), lr=1e-2)
                for step in range(10):
                    g = torch.Generator().manual_seed(100 * step + rank)
                    images, texts = torch.randn(6, 12, generator=g), torch.randn(6, 10, generator=g)
                    loss_fn(*ddp(images, texts)).backward()
                    optimizer.step()
                    optimizer.zero_grad()
                state = {k: v.detach().clone() for k, v in towers.state_dict().items()}
                weights[f"{transport}, local_loss {local_loss}"] = state
        torch.save(weights, Path(out_dir) / f"ddp{rank}.pt")
        host.close()
    finally:
        dist.destroy_process_group()


def failures_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """As if the ranks were on two nodes (one local rank each): refused on every rank. Then,
    on one host, rank 1 never joins the second collective: rank 0 times out naming it."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        os.environ["LOCAL_WORLD_SIZE"] = "1"
        try:
            HostGroup()
        except ValueError as e:
            (Path(out_dir) / f"refused{rank}.txt").write_text(str(e))
        os.environ["LOCAL_WORLD_SIZE"] = str(world)
        host = HostGroup(timeout_s=1.0)
        host.all_reduce_sum_(torch.ones(4))
        if rank == 0:
            try:
                host.all_reduce_sum_(torch.ones(4))
            except TimeoutError as e:
                (Path(out_dir) / "error.txt").write_text(str(e))
        dist.barrier()
    finally:
        dist.destroy_process_group()
