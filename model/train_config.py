"""The training run's typed config: the pipeline's ``train:`` section plus where data lives.

``python -m model.train --config FILE`` reads either

- the resolved ``{root}/train/config.yaml`` that the train stage writes: the ``train:`` keys
  at the top level plus ``shards``, ``output`` and ``storage_options``; or
- a whole pipeline YAML (``storage:`` and ``train:`` sections): shards are then
  ``{storage.root}/shards`` and outputs go to ``{storage.root}/train``.

This module never imports the pipeline's pydantic config (``model/`` stands alone), so the
keys are checked here: an unknown key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
SAMPLING = ("auto", "split", "resampled")
# Keys of the train section that only the launcher (torchrun) reads.
LAUNCH_KEYS = ("nproc_per_node", "nnodes", "rdzv_endpoint", "rdzv_port")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sizes are per rank unless named global; ``samples`` is the total
    number of training samples seen over all ranks; ``warmup`` is in optimizer steps."""

    shards: str
    """Folder (local path or fsspec URI) holding ``sizes.json`` and the ``.tar`` shards."""
    output: str
    """Folder receiving ``checkpoints/``, ``metrics.jsonl`` and ``loss_curve.png``."""
    model: str = "clipflow-tiny"
    batch_size: int = 256
    samples: int = 1_000_000
    lr: float = 5.0e-4
    weight_decay: float = 0.2
    warmup: int = 500
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1.0e-6
    precision: str = "amp_bf16"
    grad_checkpointing: bool = False
    compile: bool = False
    accum_steps: int = 1
    local_loss: bool = True
    seed: int = 0
    workers: int = 2
    resume: str | None = "latest"
    checkpoint_every_steps: int = 1000
    checkpoint_every_minutes: float = 30.0
    log_every_steps: int = 10
    vocab: str | None = None
    sampling: str = "auto"
    shuffle_buffer: int = 2000
    crop_scale_min: float = 0.8
    hflip: bool = True
    keep_checkpoints: int = 2
    timeout_minutes: float = 30.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for ``shards`` and ``output`` (e.g. an S3 endpoint URL)."""
    data_fingerprint: str | None = None
    """What the shards were made from (the shard stage's manifest digest), for the record."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "samples", "accum_steps", "checkpoint_every_steps")
        for name in positive + ("log_every_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision {self.precision!r}: must be one of {PRECISIONS}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"train.sampling {self.sampling!r}: must be one of {SAMPLING}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"train.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.workers < 0 or self.warmup < 0 or self.shuffle_buffer < 0:
            raise ValueError("train.workers, train.warmup and train.shuffle_buffer must be >= 0")

    @property
    def checkpoint_dir(self) -> str:
        return posixpath.join(self.output, "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (saved in every checkpoint)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a resolved flat dict or a pipeline dict with ``storage`` and ``train``."""
        if "train" in data and isinstance(data["train"], dict):
            data = _flatten_pipeline(data, source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - set(LAUNCH_KEYS))
        if unknown:
            raise ValueError(f"{source}: unknown train keys {unknown}")
        missing = [k for k in ("shards", "output") if not data.get(k)]
        if missing:
            raise ValueError(f"{source}: missing {missing} (or give a pipeline config)")
        return cls(**{k: v for k, v in data.items() if k in known})


def _flatten_pipeline(data: dict[str, Any], source: str) -> dict[str, Any]:
    storage = data.get("storage") or {}
    root = str(storage.get("root", "data"))
    if "://" not in root:
        base = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else "."
        root = os.path.abspath(os.path.join(base, root))
    options: dict[str, Any] = {}
    client = {
        key: storage[name]
        for name, key in (("s3_endpoint_url", "endpoint_url"), ("s3_region", "region_name"))
        if storage.get(name)
    }
    if client:
        options["client_kwargs"] = client
    flat = {"shards": posixpath.join(root, "shards"), "output": posixpath.join(root, "train")}
    return {**flat, "storage_options": options, **data["train"]}


def load_train_config(path: str, **overrides: Any) -> TrainConfig:
    """Read a YAML config (local path or fsspec URI); ``overrides`` replace keys that are set."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError as e:
        raise ValueError(f"train config not found: {path}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    if "train" in data and isinstance(data["train"], dict):
        data = _flatten_pipeline(data, path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, source=path)
