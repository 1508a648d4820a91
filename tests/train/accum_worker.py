"""The per-rank body of the 2-process accumulation test, in a module that imports little:
each spawned process re-imports it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.clip import create_model
from model.train_config import TrainConfig, resolve_model_config
from model.train_step import accumulate_gradients, make_loss

WORLD = 2
MICRO = 4  # micro-batches per step
BATCH = 6  # samples per micro-batch and rank


def global_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random images (n, 3, 28, 28) and token ids (n, 32) with an end-of-text id per row,
    the same in every process."""
    g = torch.Generator().manual_seed(7)
    images = torch.randn(n, 3, 28, 28, generator=g)
    texts = torch.randint(1, 49000, (n, 32), generator=g)
    ends = torch.randint(3, 32, (n,), generator=g)
    texts[torch.arange(n), ends] = 49407
    texts[torch.arange(32) > ends[:, None]] = 0
    return images, texts


def gradients(model: torch.nn.Module, run: torch.nn.Module, batches: list, loss: str) -> dict:
    """Every parameter's gradient after one accumulated backward over ``batches``."""
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    value = accumulate_gradients(
        run, batches, make_loss(loss, True), "fp32", scaler, dist.is_initialized()
    )
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": value, "grads": grads}


def compare_runs(loss: str, rank: int = 0, world: int = 1) -> dict:
    """(one batch of MICRO*BATCH per rank, MICRO micro-batches of BATCH per rank)."""
    torch.manual_seed(0)
    model = create_model(resolve_model_config(TrainConfig(loss=loss)))  # type: ignore[arg-type]
    run = DistributedDataParallel(model) if world > 1 else model
    images, texts = global_batch(world * MICRO * BATCH)
    mine = slice(rank * MICRO * BATCH, (rank + 1) * MICRO * BATCH)
    images, texts = images[mine], texts[mine]
    full = gradients(model, run, [(images, texts)], loss)
    micro = [(images[i::MICRO], texts[i::MICRO]) for i in range(MICRO)]
    accumulated = gradients(model, run, micro, loss)
    return {"full": full, "accumulated": accumulated}


def rank_main(rank: int, init_file: str, out_dir: str, losses: list[str]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        results = {loss: compare_runs(loss, rank, WORLD) for loss in losses}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
