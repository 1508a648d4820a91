"""Where a data-parallel CPU training step's time goes: the trainer's own step, timed by phase
(data, forward, loss, backward, optimizer) on every rank, with each collective left out in
turn to show what it costs.

    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        bench/profile_ddp_step.py data/demo/train/config.yaml [--mode ddp] [--steps 200]

The config is a train config (the train stage writes the run's resolved one as
``train/config.yaml``); its shards, model, batch and loader are used as they are. Modes:

- ``ddp``: the step as trained (DDP's all-reduce, the loss's gathers with their backward);
- ``no-allreduce``: DDP's gradient all-reduce skipped (``no_sync``);
- ``no-gather``: the loss's gathers replaced by a local stand-in of the same shape;
- ``neither``: both left out (each rank alone, but for the shape of its loss);
- ``local-loss-false``: the step with ``local_loss: false`` (one gather without autograd).

The modes that leave something out train wrongly; they only time the rest. ``--fixed`` repeats
each rank's first batch (no data loading; the same work every step). Prints, per mode, rank
0's mean milliseconds per phase, and the mean of the slower rank's step and the mean
difference between the ranks' steps (time one rank waits for the other at a collective).
Measured on the demo's shards (2026-12-02): docs/DEMO.md, issue 18's levers.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model.loss  # noqa: E402
from model.clip import clamp_logit_scale  # noqa: E402
from model.train import build_state, make_loader, pin_this_rank, setup_distributed  # noqa: E402
from model.train_config import load_train_config  # noqa: E402
from model.train_step import make_loss  # noqa: E402
from model.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402

MODES = ("ddp", "no-allreduce", "no-gather", "neither", "local-loss-false")
PHASES = ("data", "forward", "loss", "backward", "optimizer")


def _local_stand_in(x: torch.Tensor, host: object = None) -> torch.Tensor:
    """The gathered shape without communicating: this rank's rows, then detached copies."""
    _, world = model.loss._rank_and_world()
    return torch.cat([x, *(x.detach() for _ in range(world - 1))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a train config YAML (e.g. data/demo/train/config.yaml)")
    parser.add_argument("--mode", choices=MODES, default="ddp")
    parser.add_argument("--steps", type=int, default=200, help="timed steps, after 100 untimed")
    parser.add_argument("--fixed", action="store_true", help="repeat each rank's first batch")
    parser.add_argument("--host-collectives", choices=("config", "on", "off"), default="config",
                        help="train.host_collectives as in the config, or forced on or off")  # fmt: skip
    args = parser.parse_args()
    overrides: dict[str, object] = {"resume": "none"}
    if args.mode == "local-loss-false":
        overrides["local_loss"] = False
    if args.host_collectives != "config":
        overrides["host_collectives"] = args.host_collectives == "on"
    cfg = load_train_config(args.config, **overrides)
    if cfg.precision != "fp32":
        parser.error(f"profiles the fp32 CPU step; the config has precision {cfg.precision}")
    pin_this_rank(cfg)  # as model.train's main does, before the process group
    env = setup_distributed(cfg.timeout_minutes)
    if env.world < 2:
        parser.error("run it under torchrun with --nproc-per-node 2 or more")
    if args.mode in ("no-gather", "neither"):
        model.loss.gather_with_grad = _local_stand_in
    skip_allreduce = args.mode in ("no-allreduce", "neither")
    state = build_state(cfg, env, total_steps=100 + args.steps)
    loader, _ = make_loader(cfg, env, state.model, None)
    loss_fn = make_loss(cfg.loss, cfg.local_loss, state.host)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    first: tuple[torch.Tensor, torch.Tensor] | None = None

    def step() -> list[float]:
        nonlocal first
        marks = [time.perf_counter()]
        if args.fixed and first is not None:
            images, texts = first
        else:
            pixels, texts = loader.next_batch()
            images = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
            if first is None:
                first = images, texts
        marks.append(time.perf_counter())
        sync = state.ddp.no_sync() if skip_allreduce else contextlib.nullcontext()
        with sync:  # type: ignore[attr-defined]
            outputs = state.ddp(images, texts)
            marks.append(time.perf_counter())
            loss = loss_fn(*outputs)
            marks.append(time.perf_counter())
            loss.backward()
        marks.append(time.perf_counter())
        if cfg.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip_norm)
        state.optimizer.step()
        if state.token_rows is not None:
            state.token_rows.decay_unused(state.optimizer)
        state.optimizer.zero_grad(set_to_none=True)
        state.scheduler.step()
        clamp_logit_scale(state.model)
        marks.append(time.perf_counter())
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]

    for _ in range(100):
        step()
    phases = torch.tensor([step() for _ in range(args.steps)], dtype=torch.float64)
    steps = phases.sum(dim=1)
    everyone = [torch.empty_like(steps) for _ in range(env.world)]
    dist.all_gather(everyone, steps)
    if env.rank == 0:
        per_phase = ", ".join(
            f"{name} {1e3 * value:.1f}" for name, value in zip(PHASES, phases.mean(0), strict=True)
        )
        ranks = torch.stack(everyone)  # (world, steps)
        slowest = ranks.max(dim=0).values.mean()
        gap = (ranks.max(dim=0).values - ranks.min(dim=0).values).mean()
        transport = "host" if state.host is not None else "gloo"
        print(f"{args.mode}{' (fixed batch)' if args.fixed else ''} [{transport}]: step {1e3 * steps.mean():.1f}"
              f" ms ({per_phase}); slower rank {1e3 * slowest:.1f} ms, ranks apart"
              f" {1e3 * gap:.1f} ms", flush=True)  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
