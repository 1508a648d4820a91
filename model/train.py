"""Contrastive CLIP training, a plain ``torchrun`` program:

    torchrun --nproc_per_node 2 -m model.train --config data/train/config.yaml [--resume latest]

DDP over NCCL on GPUs and gloo on CPUs (with ``host_collectives``, the step's all-reduce
and gathers through shared memory among one host's CPU ranks, ``model/host_collectives.py``);
each rank scores its local batch against the
gathered global batch (``ClipLoss(local_loss=True)``, or SigLIP's loss with ``loss: siglip``);
``accum_steps`` micro-batches make one contrastive batch (``model/train_step.py``). The run is
a fixed number of optimizer steps, ``samples // (batch_size * world * accum_steps)``; the data
loader never runs dry,
so no rank ever waits on a peer that has no batch left. Checkpoints (every N steps, every M
minutes and at the end) hold everything an exact resume needs: model, optimizer, grad
scaler, schedule, step, samples seen, each rank's loader position and RNG state.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import posixpath
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.atomic import write_atomic
from model.clip import CLIP, clamp_logit_scale, create_model
from model.data import LoaderConfig, LoaderPosition, TrainLoader, read_shard_list, resolve_sampling
from model.device_decode import require_device
from model.host_collectives import HostGroup, register_ddp_hook
from model.token_rows import UsedTokenRows, use_token_rows, used_token_ids
from model.tokenizer import get_tokenizer
from model.train_checkpoint import (
    check_resumable,
    find_resume,
    read_training_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.train_config import TrainRun, load_train_config, resolve_model_config
from model.train_metrics import MetricsLog
from model.train_step import accumulate_gradients, make_loss
from model.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

log = logging.getLogger("model.train")

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job, from torchrun's environment."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def pin_to_cores(local_rank: int, local_world: int) -> set[int] | None:
    """Restrict this process, and the threads it starts later, to block ``local_rank`` of
    ``local_world`` equal blocks of the cores it may use now; returns that block, or None
    (nothing changed) where there are fewer cores than ranks or no ``sched_setaffinity``."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    per_rank = len(cores) // max(local_world, 1)
    if per_rank == 0:
        return None
    mine = set(cores[local_rank * per_rank : (local_rank + 1) * per_rank])
    os.sched_setaffinity(0, mine)
    return mine


def pin_this_rank(cfg: TrainRun) -> None:
    """``train.pin_cpu_cores`` on CPU: bind this torchrun rank to its block of the cores.
    Call it before the process group and any thread pool exist, so that their threads
    inherit it."""
    if not cfg.pin_cpu_cores or torch.cuda.is_available():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cores = pin_to_cores(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    log.info("rank %d bound to cores %s", local_rank, sorted(cores or []) or "(unchanged)")


def setup_distributed(timeout_minutes: float) -> Distributed:
    """Join the process group (NCCL on GPU, gloo on CPU) when torchrun started several."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world > 1:
        # A bounded timeout turns a peer that died or stalled into an error, not a hang.
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return Distributed(rank, world, device)


@dataclass
class TrainState:
    """What an optimizer step changes; all of it goes into a checkpoint."""

    model: CLIP
    ddp: nn.Module
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    samples_seen: int = 0
    token_rows: UsedTokenRows | None = None
    """The token embedding's trained rows, with ``train.token_rows: used``."""
    host: HostGroup | None = None
    """The shared-memory collectives, with ``train.host_collectives`` on CPU ranks."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """OpenCLIP's split: gains, biases and the temperature are not decayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        excluded = p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if excluded else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def warmup_cosine(warmup: int, total: int) -> Any:
    """LR multiplier per step: linear warmup to 1 over ``warmup`` steps, then cosine to 0."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return multiplier


def build_state(cfg: TrainRun, env: Distributed, total_steps: int) -> TrainState:
    """Model (same initial weights on every rank), DDP wrapper, AdamW, scaler, schedule."""
    torch.manual_seed(cfg.seed)
    model = create_model(
        resolve_model_config(cfg), device=env.device, grad_checkpointing=cfg.grad_checkpointing
    )
    token_rows = None
    if cfg.token_rows == "used":
        shards, _ = read_shard_list(cfg.shards, cfg.storage_options)
        tokenizer = get_tokenizer(cfg.vocab, context_length=model.context_length)
        token_rows = use_token_rows(model, used_token_ids(shards, cfg.storage_options, tokenizer))
        log.info("token_rows 'used': %d of the embedding's %d rows are trained, the others "
                 "only decay", len(token_rows.used), token_rows.num_embeddings)  # fmt: skip
    ddp: nn.Module = model
    if env.world > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        # Gradients as views into DDP's all-reduce buckets: no copy into the buckets and out
        # again each step (~2 ms of the demo's ~75 ms CPU step), the same sums.
        ddp = DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    host = None
    if cfg.host_collectives and env.world > 1:
        if env.device.type == "cpu":
            host = HostGroup(timeout_s=cfg.timeout_minutes * 60)
            register_ddp_hook(ddp, host)  # type: ignore[arg-type]
            log.info("host_collectives: the gradient all-reduce and the loss's gathers go "
                     "through shared memory")  # fmt: skip
        else:
            log.info("host_collectives: ignored on %s (NCCL)", env.device.type)
    if cfg.compile:
        ddp = torch.compile(ddp)  # type: ignore[assignment]
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=True,  # one kernel per step: ~5x faster than the default on CPU too
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "amp_fp16")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup, total_steps))
    return TrainState(model, ddp, optimizer, scaler, schedule, token_rows=token_rows, host=host)


def checkpoint_dict(state: TrainState, cfg: TrainRun, loader: TrainLoader) -> dict[str, Any]:
    """Every rank's loader position and RNG state (a collective), plus rank 0's model."""
    mine = {"loader": loader.position.to_dict(), "rng": rng_state()}
    everyone = [mine]
    if dist.is_initialized():
        everyone = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(everyone, mine)
    return {
        "state_dict": state.model.state_dict(),
        "model_config": state.model.config.to_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,
        "samples_seen": state.samples_seen,
        "token_rows": None if state.token_rows is None else state.token_rows.used.cpu(),
        "loader_state": [e["loader"] for e in everyone],
        "rng_state": [e["rng"] for e in everyone],
        "config": cfg.to_dict(),
    }


def _rows(ids: Tensor | None) -> str:
    return "all rows" if ids is None else f"{len(ids)} used rows"


def check_same_token_rows(saved: Tensor | None, current: Tensor | None) -> None:
    """Refuse a resume whose optimizer state belongs to other token-embedding rows (None:
    the whole table)."""
    same = saved is current if saved is None or current is None else torch.equal(saved, current)
    if not same:
        raise ValueError(
            f"cannot resume: the checkpoint trained {_rows(saved)} of the token embedding, "
            f"this run {_rows(current)} (train.token_rows changed, or the captions did); "
            "resume: none starts over"
        )


def restore(
    state: TrainState, checkpoint: dict[str, Any], env: Distributed
) -> LoaderPosition | None:
    """Load a checkpoint into ``state``; returns this rank's loader position (or a fresh one
    when the number of ranks changed, which makes the resume inexact). Refuses a checkpoint
    whose optimizer trained other token-embedding rows (``train.token_rows``)."""
    current = None if state.token_rows is None else state.token_rows.used.cpu()
    check_same_token_rows(checkpoint.get("token_rows"), current)
    state.model.load_state_dict(checkpoint["state_dict"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.step, state.samples_seen = checkpoint["step"], checkpoint["samples_seen"]
    saved = checkpoint["loader_state"]
    if len(saved) != env.world:
        log.warning("checkpoint from %d ranks, now %d: data order restarts", len(saved), env.world)
        return None
    set_rng_state(checkpoint["rng_state"][env.rank])
    return LoaderPosition(**saved[env.rank])


def train_step(
    state: TrainState, loader: TrainLoader, cfg: TrainRun, env: Distributed, loss_fn: nn.Module
) -> tuple[Tensor, float]:
    """One optimizer step over ``accum_steps`` micro-batches, which together make one
    contrastive batch; returns (its loss, seconds spent waiting for data)."""
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=env.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=env.device).view(1, 3, 1, 1)
    batches, waited = [], 0.0
    for _ in range(cfg.accum_steps):
        started = time.perf_counter()
        pixels, texts = loader.next_batch()
        waited += time.perf_counter() - started
        pixels = pixels.to(env.device, non_blocking=True)
        images = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std  # (B, 3, S, S)
        batches.append((images, texts.to(env.device)))
    loss = accumulate_gradients(
        state.ddp, batches, loss_fn, cfg.precision, state.scaler, env.world > 1
    )
    if cfg.grad_clip_norm is not None:
        state.scaler.unscale_(state.optimizer)  # clip the true gradient, not the scaled one
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip_norm)
    state.scaler.step(state.optimizer)
    if state.token_rows is not None:
        state.token_rows.decay_unused(state.optimizer)  # at this step's learning rate
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    clamp_logit_scale(state.model)
    return loss, waited


def make_loader(
    cfg: TrainRun, env: Distributed, model: CLIP, position: LoaderPosition | None
) -> tuple[TrainLoader, int]:
    """The rank's loader and the dataset size (samples in ``sizes.json``)."""
    shards, sizes = read_shard_list(cfg.shards, cfg.storage_options)
    loader_cfg = LoaderConfig(
        shards=shards,
        sizes=sizes,
        batch_size=cfg.batch_size,
        image_size=model.config.vision.image_size,
        context_length=model.context_length,
        workers=cfg.workers,
        seed=cfg.seed,
        sampling=resolve_sampling(cfg.sampling, len(shards), env.world, cfg.workers),
        shuffle_buffer=cfg.shuffle_buffer,
        decoded_cache_mb=cfg.decoded_cache_mb,
        crop_scale=(cfg.crop_scale_min, 1.0),
        crop_ratio=(cfg.crop_ratio_min, cfg.crop_ratio_max),
        hflip=cfg.hflip,
        vocab=cfg.vocab,
        storage_options=cfg.storage_options,
        decode_device=None if cfg.decode_device == "cpu" else str(env.device),
    )
    return TrainLoader(loader_cfg, env.rank, env.world, position), sum(sizes)


@dataclass
class Window:
    """What happened since the last logged step, on this rank."""

    started: float
    loss: Tensor
    steps: int = 0
    waited: float = 0.0


def log_step(
    state: TrainState, window: Window, env: Distributed, loader: TrainLoader, checkpoint_due: bool
) -> tuple[dict[str, Any], bool]:
    """The metrics record of a logged step, averaged over ranks (a collective), and whether
    a time-based checkpoint is due (rank 0's clock decides for everyone)."""
    elapsed = time.perf_counter() - window.started
    totals = torch.tensor(
        [window.loss.item(), window.steps, window.waited / elapsed, loader.position.skipped,
         float(checkpoint_due and env.is_master)],
        dtype=torch.float64,
    )  # fmt: skip
    if env.world > 1:
        dist.all_reduce(totals)
    loss_sum, steps, wait_sum, skipped, due = totals.tolist()
    global_batch = state.samples_seen / max(state.step, 1)
    record = {
        "step": state.step,
        "loss": loss_sum / (steps or 1),
        "lr": state.optimizer.param_groups[0]["lr"],
        "logit_scale": state.model.logit_scale.exp().item(),
        **({} if state.model.logit_bias is None else {"logit_bias": state.model.logit_bias.item()}),
        "samples_per_s": global_batch * window.steps / elapsed,
        "data_wait": wait_sum / env.world,
        "samples_seen": state.samples_seen,
        "skipped_samples": int(skipped),
    }
    return record, due > 0


def train(cfg: TrainRun, env: Distributed) -> dict[str, Any]:
    """Run (or resume) training to the configured number of samples; returns the summary."""
    if cfg.decode_device == "cuda":
        require_device("cuda")  # refused before anything is built or written
    global_batch = cfg.batch_size * env.world * cfg.accum_steps
    total_steps = max(1, cfg.samples // global_batch)
    state = build_state(cfg, env, total_steps)
    torch.manual_seed(cfg.seed + env.rank)  # a resume restores the saved state instead
    position = None
    resume_uri = find_resume(cfg.resume, cfg.checkpoint_dir, cfg.storage_options)
    if resume_uri is not None:
        checkpoint = read_training_checkpoint(resume_uri, cfg.storage_options)
        check_resumable(checkpoint.get("config", {}), cfg, resume_uri)
        position = restore(state, checkpoint, env)
        log.info("resumed from %s at step %d", resume_uri, state.step)
    loader, dataset_size = make_loader(cfg, env, state.model, position)
    metrics = MetricsLog(cfg.output, cfg.storage_options, state.step) if env.is_master else None
    if env.is_master:
        write_atomic(json.dumps(cfg.to_dict(), indent=2).encode(),
                     posixpath.join(cfg.output, "resolved_config.json"), cfg.storage_options)  # fmt: skip
    loss_fn = make_loss(cfg.loss, cfg.local_loss, state.host)
    bar = tqdm(
        total=total_steps, initial=state.step, disable=not env.is_master, unit="step",
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )  # fmt: skip
    last_checkpoint = time.monotonic()
    window = Window(time.perf_counter(), torch.zeros((), device=env.device))
    while state.step < total_steps:
        loss, waited = train_step(state, loader, cfg, env, loss_fn)
        state.step += 1
        state.samples_seen += global_batch
        window.loss += loss
        window.steps, window.waited = window.steps + 1, window.waited + waited
        bar.update(1)
        save = state.step % cfg.checkpoint_every_steps == 0 or state.step == total_steps
        if state.step % cfg.log_every_steps == 0 or state.step == total_steps:
            minutes = (time.monotonic() - last_checkpoint) / 60
            record, due = log_step(
                state, window, env, loader, minutes >= cfg.checkpoint_every_minutes
            )
            record["epoch"] = state.samples_seen / dataset_size
            bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.0f}")
            if metrics is not None:
                metrics.append(record)
            save = save or due
            window = Window(time.perf_counter(), torch.zeros((), device=env.device))
        if save:
            checkpoint = checkpoint_dict(state, cfg, loader)
            if env.is_master and metrics is not None:
                save_checkpoint(checkpoint, cfg.checkpoint_dir, cfg.storage_options,
                                cfg.keep_checkpoints)  # fmt: skip
                metrics.sync()
            last_checkpoint = time.monotonic()
    bar.close()
    return finish(state, cfg, env, loader, metrics)


def finish(
    state: TrainState,
    cfg: TrainRun,
    env: Distributed,
    loader: TrainLoader,
    metrics: MetricsLog | None,
) -> dict[str, Any]:
    """Write the loss curve and ``summary.json`` (rank 0); every rank returns the summary."""
    skipped = torch.tensor([loader.position.skipped], dtype=torch.float64)
    if env.world > 1:
        dist.all_reduce(skipped)
    summary: dict[str, Any] = {
        "step": state.step,
        "samples_seen": state.samples_seen,
        "skipped_samples": int(skipped.item()),
        "checkpoint": posixpath.join(cfg.checkpoint_dir, "latest.pt"),
    }
    if metrics is not None:
        metrics.sync()
        summary["final"] = metrics.records[-1] if metrics.records else {}
        summary["loss_curve"] = metrics.plot() if metrics.records else None
        summary["metrics"] = metrics.uri
        write_atomic(json.dumps(summary, indent=2).encode(),
                     posixpath.join(cfg.output, SUMMARY_FILE), cfg.storage_options)  # fmt: skip
    return summary


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this rank when its parent (torchrun's agent) dies: torchrun puts
    each rank in a session of its own, so killing the launcher would otherwise leave the
    ranks training on as orphans."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m model.train`` (one process per rank under torchrun)."""
    parser = argparse.ArgumentParser(prog="model.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="train config YAML (path or URI)")
    parser.add_argument("--resume", help="'latest', a checkpoint path/URI, or 'none'")
    args = parser.parse_args(argv)
    die_with_launcher()
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    cfg = load_train_config(args.config, resume=args.resume)
    pin_this_rank(cfg)
    env = setup_distributed(cfg.timeout_minutes)
    try:
        summary = train(cfg, env)
    except Exception as e:
        # One line the launcher can pick out of torchrun's much longer failure report.
        log.error("training failed: %s: %s", type(e).__name__, e)
        raise
    else:
        log.info("done: %s", json.dumps({k: summary[k] for k in ("step", "samples_seen")}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
