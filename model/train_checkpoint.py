"""Training checkpoints: written atomically to a local folder or an fsspec URI (S3).

A checkpoint is one ``torch.save``'d dict::

    {"state_dict": OpenCLIP parameter names -> tensors, "model_config": OpenCLIP-format dict,
     "optimizer", "scaler", "scheduler", "step", "samples_seen", "loader_state",
     "rng_state": one entry per rank, "config": the resolved train config,
     "token_rows": the token ids whose embedding rows the optimizer trains, or None for all}

The state dict always holds the whole token-embedding table (``model/token_rows.py``).

``step_N.pt`` is written first, then ``latest.pt`` becomes a copy of it, so a reader sees
either the previous complete checkpoint or the new one, never a partial file (both through
``model.atomic``: a temporary name renamed locally, a checksummed upload or server-side copy
on S3, where an object appears only once complete).
"""

from __future__ import annotations

import io
import logging
import posixpath
import random
import re
from typing import Any

import fsspec
import numpy as np
import torch

from model.atomic import AtomicWriter
from model.train_config import TrainConfig

log = logging.getLogger(__name__)

LATEST = "latest.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return fs, path


def is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU and CUDA)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        # As a tensor, so that torch.load(weights_only=True) reads the whole checkpoint.
        "numpy": [name, torch.from_numpy(np.asarray(keys, np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    checkpoint: dict[str, Any], folder: str, storage_options: dict[str, Any], keep: int
) -> str:
    """Write ``step_N.pt`` and ``latest.pt`` under ``folder``; keep the newest ``keep``
    step files. Returns the step file's URI."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    step_uri = posixpath.join(folder, f"step_{checkpoint['step']}.pt")
    writer = AtomicWriter.for_options(storage_options)
    writer.write_bytes(data, step_uri)
    writer.copy(step_uri, posixpath.join(folder, LATEST))
    _prune(folder, storage_options, keep)
    log.info("checkpoint step %d -> %s (%.1f MB)", checkpoint["step"], step_uri, len(data) / 1e6)
    return step_uri


def _prune(folder: str, storage_options: dict[str, Any], keep: int) -> None:
    fs, path = filesystem(folder, storage_options)
    steps = []
    for entry in fs.ls(path, detail=False):
        match = _STEP_FILE.search(entry)
        if match:
            steps.append((int(match.group(1)), entry))
    for _, entry in sorted(steps)[:-keep]:
        fs.rm(entry)


def find_resume(resume: str | None, folder: str, storage_options: dict[str, Any]) -> str | None:
    """The checkpoint to resume from: None for a fresh run, ``latest`` (when one exists) or
    an explicit path, which must exist."""
    if resume in (None, "", "none", "null"):
        return None
    uri = posixpath.join(folder, LATEST) if resume == "latest" else resume
    fs, path = filesystem(uri, storage_options)
    if fs.exists(path):
        return uri
    if resume == "latest":
        log.info("no %s yet: starting a fresh run", uri)
        return None
    raise FileNotFoundError(f"train.resume: checkpoint {resume} does not exist")


def read_training_checkpoint(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Load a full training checkpoint (optimizer and RNG state included) on the CPU, as
    tensors and plain values only (no pickled code runs)."""
    with fsspec.open(uri, "rb", **storage_options) as f:
        checkpoint: dict[str, Any] = torch.load(f, map_location="cpu", weights_only=True)
    return checkpoint


# Settings that a resume may only change with force_resume: they move the LR schedule
# (the number of steps) or the data order.
SCHEDULE_KEYS = ("samples", "batch_size", "accum_steps", "workers")


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, source: str) -> None:
    """Refuse to resume a run whose schedule or data order the config would change, unless
    ``cfg.force_resume``."""
    changed = [k for k in SCHEDULE_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if changed and not cfg.force_resume:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume {source}: train config changed ({detail}), which changes the "
            "learning-rate schedule or the data order; set train.force_resume: true to "
            "resume anyway, or resume: none to start over"
        )
