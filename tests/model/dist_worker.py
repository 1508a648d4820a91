"""The per-rank body of the 2-process gloo loss test, in a module that imports little: each
spawned process re-imports it, and importing open_clip there would cost more than the test."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.loss import ClipLoss, SigLipLoss

WORLD = 2
LOCAL_BATCH = 5
DIM = 16


def features(seed: int, n: int = WORLD * LOCAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of unit image and text features, the same in every process."""
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, DIM, generator=g), dim=-1),
        F.normalize(torch.randn(n, DIM, generator=g), dim=-1),
    )


def loss_of(kind: str, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The loss under test: "local" / "global" CLIP loss or "siglip"."""
    if kind == "siglip":
        return SigLipLoss()(img, txt, scale, torch.tensor(-5.0))
    return ClipLoss(local_loss=kind == "local")(img, txt, scale)


def backward_collectives(loss: torch.Tensor) -> list[str]:
    """The autograd nodes of ``loss``'s graph that communicate in the backward pass
    (torch.distributed.nn's all-gather and all-to-all, the neighbour exchanges)."""
    names, seen, todo = [], set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if any(word in name for word in ("AllGather", "AlltoAll", "Exchange", "Shift")):
            names.append(name)
        todo += [child for child, _ in node.next_functions]
    return sorted(names)


def rank_main(rank: int, init_file: str, out_dir: str, kinds: list[str]) -> None:
    """Compute each loss on this rank's rows and save loss and gradients to ``out_dir``."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for seed, kind in enumerate(kinds):
            img, txt = (t[rows].clone().requires_grad_() for t in features(seed))
            scale = torch.tensor(12.0, requires_grad=True)
            loss = loss_of(kind, img, txt, scale)
            collectives = backward_collectives(loss)
            loss.backward()
            results[kind] = {
                "backward_collectives": collectives,
                "loss": loss.detach(),
                "img": img.grad,
                "txt": txt.grad,
                "scale": scale.grad,
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def siglip_rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """SigLIP's loss and gradients on this rank's rows of a ``world`` x LOCAL_BATCH batch."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        img, txt = (t[rows].clone().requires_grad_() for t in features(5, world * LOCAL_BATCH))
        scale = torch.tensor(12.0, requires_grad=True)
        loss = loss_of("siglip", img, txt, scale)
        loss.backward()
        result = {"loss": loss.detach(), "img": img.grad, "txt": txt.grad, "scale": scale.grad}
        torch.save(result, Path(out_dir) / f"siglip{rank}.pt")
    finally:
        dist.destroy_process_group()
