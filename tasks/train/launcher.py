"""train: launch ``torchrun -m model.train`` on the shards and read back what it wrote.

The stage writes the resolved run config to ``{root}/train/config.yaml`` (the ``train:``
section plus where the shards and outputs live), starts ``torchrun`` as a subprocess,
streams its output line by line to a callback, and fails with the output's tail when
training fails. Checkpoints, ``metrics.jsonl``, ``loss_curve.png`` and ``summary.json``
come from ``model/train.py`` itself.

A rerun resumes from ``latest.pt`` only when the previous run trained the same model on
the same data with the same optimisation settings; anything else starts over, because
continuing another run's checkpoint would mix two experiments.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.train_config import TrainConfig, TrainRun
from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult, manifest_digest, read_manifest
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage

log = logging.getLogger(__name__)

LAUNCH_KEYS = ("nproc_per_node", "nnodes", "rdzv_endpoint", "rdzv_port")
# Keys that may differ between a run and the one it resumes: they change how far or how
# verbosely a run goes, not what it learns from. A changed ``samples`` or ``workers`` still
# reaches model.train, which refuses it (schedule, data order) unless ``force_resume``.
RESUMABLE_CHANGES = frozenset(
    {"resume", "force_resume", "samples", "workers", "decode_device", "decoded_cache_mb",
     "pin_cpu_cores", "host_collectives", "checkpoint_every_steps", "checkpoint_every_minutes", "log_every_steps", "keep_checkpoints",
     "timeout_minutes", *LAUNCH_KEYS}
)  # fmt: skip
TAIL_LINES = 40
MAX_ERROR_LINES = 10
_LINE_BREAK = re.compile(rb"[\r\n]")
# model.train's own log lines at ERROR level ("... [rank 1] ERROR model.train: ...").
_ERROR_LINE = re.compile(r"\[rank \d+\] ERROR ")
_REPO = Path(__file__).resolve().parents[2]


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the message carries the tail of its output."""


def resolved_config(cfg: PipelineConfig, storage: Storage) -> dict[str, Any]:
    """What ``model.train`` reads: the train section, data and output URIs, fsspec options."""
    run = TrainRun.of(
        cfg.train,
        shards=storage.uri("shards"),
        output=storage.uri("train"),
        storage_options=storage.storage_options(),
        data_fingerprint=_shards_digest(storage),
    )
    return run.to_dict()


def can_resume(previous: dict[str, Any] | None, current: dict[str, Any]) -> tuple[bool, str]:
    """Whether a run with config ``current`` may continue the checkpoints of ``previous``;
    the reason names the first key that differs."""
    if previous is None:
        return False, "no previous run"
    for key in sorted(set(previous) | set(current)):
        if key not in RESUMABLE_CHANGES and previous.get(key) != current.get(key):
            return (
                False,
                f"train config changed ({key}: {previous.get(key)!r} -> {current.get(key)!r})",
            )
    return True, "same model, data and optimisation"


def rendezvous_endpoint(train: TrainConfig) -> str:
    """host:port of the c10d rendezvous: the configured one, or this host's."""
    return train.rdzv_endpoint or f"{socket.getfqdn()}:{train.rdzv_port}"


def torchrun_command(train: TrainConfig, config_path: str, run_id: str) -> list[str]:
    """The command line of this node's ``torchrun``; every node runs the same one."""
    launch = [sys.executable, "-m", "torch.distributed.run"]
    if train.nnodes == 1 and train.rdzv_endpoint is None:
        launch += ["--standalone", "--nnodes", "1"]
    else:
        launch += [
            "--nnodes", str(train.nnodes),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", rendezvous_endpoint(train),
            "--rdzv-id", run_id,
        ]  # fmt: skip
    launch += ["--nproc-per-node", str(train.nproc_per_node)]
    return [*launch, "-m", "model.train", "--config", config_path]


@dataclass
class ProcessOutput:
    """How a launched process ended: exit code, its last lines, and the ranks' error lines
    (which torchrun's own failure report would otherwise push out of the tail)."""

    code: int
    tail: list[str]
    errors: list[str]

    def failure_message(self) -> str:
        errors = "\n".join(self.errors) or "(no error line from the ranks)"
        return f"torchrun exited with code {self.code}:\n{errors}\nlast lines:\n" + "\n".join(
            self.tail
        )


def stream_process(
    command: list[str], on_line: Callable[[str], None], env: dict[str, str] | None = None
) -> ProcessOutput:
    """Run ``command``, passing each output line (``\\r`` progress updates too) to
    ``on_line``. The process group dies with us."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    errors: list[str] = []
    proc = subprocess.Popen(
        command,
        cwd=_REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one group: ranks and loader workers stop together
    )
    assert proc.stdout is not None
    pending = b""
    try:
        # read1 returns what is there now, so progress lines arrive as they are written.
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            *lines, pending = _LINE_BREAK.split(pending + chunk)
            for raw in lines:
                if line := raw.decode("utf-8", "replace").rstrip():
                    tail.append(line)
                    on_line(line)
                    if _ERROR_LINE.search(line) and len(errors) < MAX_ERROR_LINES:
                        errors.append(line)
        if pending.strip():
            tail.append(pending.decode("utf-8", "replace"))
            on_line(tail[-1])
        return ProcessOutput(proc.wait(), list(tail), errors)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _shards_digest(storage: Storage) -> str | None:
    """The shard manifest the run trains on (what the train manifest records as upstream)."""
    shards = read_manifest(storage, "shard")
    return None if shards is None else manifest_digest(shards)


def prepare_run(cfg: PipelineConfig, storage: Storage, fresh: bool = False) -> dict[str, Any]:
    """Write ``{root}/train/config.yaml``; clear the old run's outputs unless it can resume
    (``fresh``, as under --force, always starts over)."""
    current = resolved_config(cfg, storage)
    config_uri = storage.uri("train", "config.yaml")
    previous = (
        yaml.safe_load(storage.read_bytes(config_uri)) if storage.exists(config_uri) else None
    )
    resume, reason = can_resume(previous, current)
    if fresh:
        resume, reason = False, "forced"
    if not resume or cfg.train.resume is None:
        for name in ("checkpoints", "metrics.jsonl", "summary.json", "loss_curve.png"):
            storage.remove(storage.uri("train", name), recursive=True)
        log.info("train: starting a fresh run (%s)", reason if not resume else "resume: null")
    else:
        log.info("train: resuming if a checkpoint exists (%s)", reason)
    storage.write_bytes(config_uri, yaml.safe_dump(current, sort_keys=True).encode())
    return current


def train(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The train stage: run torchrun to completion on this node, its output lines to
    ``ctx.log_line``; return its summary. A forced run discards earlier checkpoints instead
    of resuming from them. ``decode_device: cuda`` on a node without a GPU is refused here,
    before torchrun starts (``model/train.py`` checks again on each rank)."""
    if cfg.train.decode_device == "cuda":
        from model.device_decode import require_device  # torch: only when asked

        require_device("cuda")
    current = prepare_run(cfg, storage, ctx.force)
    with tempfile.TemporaryDirectory(prefix="clipflow-train-") as tmp:
        # torchrun's ranks read the config from a local file, wherever storage lives.
        config_path = os.path.join(tmp, "config.yaml")
        Path(config_path).write_text(yaml.safe_dump(current, sort_keys=True))
        command = torchrun_command(cfg.train, config_path, run_id=cfg.name)
        log.info("train: %s", " ".join(command))
        result = stream_process(command, ctx.log_line)
    if result.code != 0:
        raise TrainingFailed(result.failure_message())
    summary = storage.read_json(storage.uri("train", "summary.json"))
    return StageResult(
        counts={
            "steps": summary["step"],
            "samples_seen": summary["samples_seen"],
            "skipped_samples": summary["skipped_samples"],
        },
        outputs={
            "checkpoint": summary["checkpoint"],
            "metrics": summary["metrics"],
            "loss_curve": summary["loss_curve"],
            "config": storage.uri("train", "config.yaml"),
        },
        extra={"final": summary["final"]},
    )


def read_metrics(storage: Storage) -> list[dict[str, Any]]:
    """The records of ``{root}/train/metrics.jsonl`` (empty before the first logged step)."""
    uri = storage.uri("train", "metrics.jsonl")
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines() if line]
