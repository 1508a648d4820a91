"""The training config: the pipeline's ``train:`` section, and one run of it.

``TrainConfig`` is the ``train:`` section, defined once: the pipeline's ``PipelineConfig``
embeds this dataclass (pydantic validates it there), and ``TrainRun`` adds where the data
lives for ``model/train.py``. ``python -m model.train --config FILE`` reads either

- the resolved ``{root}/train/config.yaml`` that the train stage writes: the ``train:`` keys
  at the top level plus ``shards``, ``output`` and ``storage_options``; or
- a whole pipeline YAML (``storage:`` and ``train:`` sections): shards are then
  ``{storage.root}/shards`` and outputs go to ``{storage.root}/train``.

This module never imports the pipeline's config, pydantic or Prefect (``model/`` stands
alone), so values are checked here: an unknown key or a bad value is an error naming it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import fsspec
import yaml

from model.config import ModelConfig, get_model_config

Precision = Literal["fp32", "amp_bf16", "amp_fp16"]
Sampling = Literal["auto", "split", "resampled"]
Loss = Literal["clip", "siglip"]
DecodeDevice = Literal["cpu", "cuda"]
TokenRows = Literal["all", "used"]
# OpenCLIP's --siglip initialisation, for a model config that has no logit bias of its own.
SIGLIP_INIT_LOGIT_SCALE = math.log(10)
SIGLIP_INIT_LOGIT_BIAS = -10.0
PRECISIONS: tuple[str, ...] = get_args(Precision)
SAMPLING: tuple[str, ...] = get_args(Sampling)
LOSSES: tuple[str, ...] = get_args(Loss)
DECODE_DEVICES: tuple[str, ...] = get_args(DecodeDevice)
TOKEN_ROWS: tuple[str, ...] = get_args(TokenRows)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_AT_LEAST_ONE = (
    "batch_size", "samples", "accum_steps", "checkpoint_every_steps", "log_every_steps",
    "keep_checkpoints", "nproc_per_node", "nnodes",
)  # fmt: skip
# What each checked field of the train section must be: (rule as the error states it, test).
_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **{name: ("an integer >= 1", lambda v: _integer(v) and v >= 1) for name in _AT_LEAST_ONE},
    **{
        name: ("an integer >= 0", lambda v: _integer(v) and v >= 0)
        for name in ("warmup", "workers", "shuffle_buffer", "decoded_cache_mb")
    },
    **{
        name: ("a number > 0", lambda v: _number(v) and v > 0)
        for name in ("lr", "checkpoint_every_minutes", "timeout_minutes")
    },
    "weight_decay": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "crop_scale_min": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "crop_ratio_min": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "crop_ratio_max": ("a number >= 1", lambda v: _number(v) and v >= 1),
    "grad_clip_norm": ("a number > 0 or null", lambda v: v is None or (_number(v) and v > 0)),
    "init_logit_scale": ("a number or null", lambda v: v is None or _number(v)),
    "init_logit_bias": ("a number or null", lambda v: v is None or _number(v)),
    "loss": (f"one of {LOSSES}", lambda v: v in LOSSES),
    "rdzv_port": ("a port number (1-65535)", lambda v: _integer(v) and 0 < v < 65536),
    "precision": (f"one of {PRECISIONS}", lambda v: v in PRECISIONS),
    "sampling": (f"one of {SAMPLING}", lambda v: v in SAMPLING),
    "decode_device": (f"one of {DECODE_DEVICES}", lambda v: v in DECODE_DEVICES),
    "token_rows": (f"one of {TOKEN_ROWS}", lambda v: v in TOKEN_ROWS),
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The ``train:`` section. Sizes are per rank unless named global; ``samples`` is the total
    number of training samples seen over all ranks; ``warmup`` is in optimizer steps."""

    # Read by pydantic where PipelineConfig embeds this class: a typo is an error there too.
    __pydantic_config__ = {"extra": "forbid"}

    model: str = "clipflow-tiny"
    """Architecture name in model/configs, or the path of an OpenCLIP-format config JSON."""
    batch_size: int = 256
    samples: int = 1_000_000
    lr: float = 5.0e-4
    weight_decay: float = 0.2
    warmup: int = 500
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1.0e-6
    precision: Precision = "amp_bf16"
    grad_checkpointing: bool = False
    compile: bool = False
    accum_steps: int = 1
    """Micro-batches per optimizer step. Their features are cached and each micro-batch is
    recomputed against all of them (OpenCLIP's scheme), so the gradient is that of one
    contrastive batch of ``batch_size * accum_steps`` per rank, not of separate batches."""
    local_loss: bool = True
    """CLIP loss only: each rank scores its own rows against the global batch (memory
    O(B_local x B_global); the gather carries gradient back, a collective in the backward
    pass), or, false, the whole global batch (memory O(B_global^2); the features are gathered
    once without autograd, and the backward pass communicates nothing but DDP's all-reduce).
    The same gradient either way, up to float rounding (``model/loss.py``)."""
    loss: Loss = "clip"
    """clip: CLIP's softmax contrastive loss; siglip: SigLIP's sigmoid loss, which also trains
    the model's ``logit_bias``."""
    init_logit_scale: float | None = None
    """Initial log temperature; None means the model config's, or ln 10 for ``loss: siglip``
    on a model config without a logit bias (OpenCLIP's ``--siglip``)."""
    init_logit_bias: float | None = None
    """SigLIP's initial logit bias (``loss: siglip`` only); None means the model config's,
    else -10 (OpenCLIP's ``--siglip``)."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this (after unscaling under amp_fp16); None: never."""
    seed: int = 0
    nproc_per_node: int = 1
    """Launcher only (torchrun): processes per node. ``model/train.py`` ignores it."""
    nnodes: int = 1
    """Launcher only: nodes in the run."""
    rdzv_endpoint: str | None = None
    """Launcher only: host:port of the c10d rendezvous; None means this host's, at rdzv_port."""
    rdzv_port: int = 29500
    """Launcher only: rendezvous port on the first node when nnodes > 1 and rdzv_endpoint
    is unset."""
    workers: int = 2
    resume: str | None = "latest"
    force_resume: bool = False
    """Resume even when ``samples``, ``batch_size``, ``accum_steps`` or ``workers`` differ
    from the checkpoint's run, which changes the LR schedule or the data order."""
    checkpoint_every_steps: int = 1000
    checkpoint_every_minutes: float = 30.0
    log_every_steps: int = 10
    vocab: str | None = None
    """Path to a trained BPE vocabulary; None means CLIP's own 49,152-merge vocabulary."""
    token_rows: TokenRows = "all"
    """all: the whole token-embedding table is one parameter. used: only the rows of the
    token ids that the training captions use are trained (the captions are read and
    tokenised once before training); the others only decay, as AdamW decays a row whose
    gradient is zero. The weights are the same (bit for bit on the CPU), while the gradient,
    its all-reduce, the clipping norm and AdamW cover the used rows instead of all 49,408
    (``model/token_rows.py``). For small datasets: the demo's captions use 954 rows, and its
    training on two CPU ranks took 87-88 s instead of 118-123 s. Not with ``amp_fp16``,
    whose skipped steps would still decay the other rows."""
    sampling: Sampling = "auto"
    """split: each epoch's shards are divided among ranks x workers (fewer shards than readers
    is an error); resampled: shards drawn with replacement; auto: split, or resampled when
    there are fewer shards than readers."""
    shuffle_buffer: int = 2000
    """Samples held per data-loader worker for shuffling (0: shard order only)."""
    pin_cpu_cores: bool = False
    """On CPU, bind each rank of a node (and the threads it starts: gloo's, OpenMP's) to its
    own block of the cores it may use, block ``LOCAL_RANK`` of ``LOCAL_WORLD_SIZE`` equal
    blocks, as CPU launchers bind instances to cores; nothing where there are fewer cores
    than ranks. The same arithmetic; on the demo's two ranks a step waits less at the
    collectives (docs/DEMO.md, issue 18)."""
    host_collectives: bool = False
    """On CPU, with every rank on this host: DDP's gradient all-reduce and the CLIP loss's
    feature gathers go through shared memory (``model/host_collectives.py``) instead of
    gloo's loopback TCP and worker threads; the rest (start-up, logging, checkpoints) stays
    on gloo. The same sums, bit for bit with two ranks. Refused with ranks on several nodes;
    ignored on GPUs (NCCL). On the demo's two ranks a step waits less at the collectives
    (docs/DEMO.md, issue 18)."""
    decoded_cache_mb: int = 0
    """MiB each data-loader worker keeps in memory (0: none): decoded images, and whole
    shards' samples once read to their end, so that a dataset that fits is read and decoded
    once, not once per epoch. Batches are bit-identical either way: the random crop is drawn
    on the cached image as on a fresh decode, and a kept shard yields its samples in the
    order it was read. What is beyond the budget is read and decoded every time."""
    crop_scale_min: float = 0.9
    """Smallest image area fraction a training random-resized crop keeps (OpenCLIP: 0.9)."""
    crop_ratio_min: float = 3 / 4
    """Narrowest crop aspect ratio (width / height) of the random-resized crop."""
    crop_ratio_max: float = 4 / 3
    """Widest crop aspect ratio; images outside the range get the largest crop inside it."""
    decode_device: DecodeDevice = "cpu"
    """Where training JPEGs are decoded, cropped and resized. cpu: in the loader's worker
    processes (PIL); cuda: on this rank's GPU, one nvJPEG call per batch, which leaves the
    workers only reading, shuffling and tokenising (``model/device_decode.py``). Refused
    before training starts where no GPU is visible."""
    hflip: bool = False
    """Random horizontal flips. Off, as in CLIP and OpenCLIP: captions name sides ("facing
    left") and flips mirror text and digits."""
    keep_checkpoints: int = 2
    """step_N.pt files kept (latest.pt aside); older ones are deleted."""
    timeout_minutes: float = 30.0
    """Collective timeout: a rank that waits longer on its peers fails instead of hanging."""

    def __post_init__(self) -> None:
        for name, (rule, fits) in _RULES.items():
            value = getattr(self, name)
            if not fits(value):
                raise ValueError(f"train.{name} must be {rule}, got {value!r}")
        for spec in dataclasses.fields(self):  # a YAML "yes" or "false" string is not a bool
            value = getattr(self, spec.name)
            # (the annotation is the string "bool" under ``from __future__ import annotations``)
            if spec.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"train.{spec.name} must be true or false, got {value!r}")
        if self.token_rows == "used" and self.precision == "amp_fp16":
            raise ValueError(
                "train.token_rows 'used' is not supported with precision amp_fp16: a step the "
                "grad scaler skips would still decay the unused rows; use amp_bf16 or fp32"
            )
        if self.loss == "clip" and self.init_logit_bias is not None:
            raise ValueError(
                f"train.init_logit_bias is {self.init_logit_bias} but train.loss is 'clip': a "
                "logit bias is SigLIP's and the CLIP loss would never train it; set "
                "train.loss: siglip or remove init_logit_bias"
            )


@dataclass(frozen=True, kw_only=True)
class TrainRun(TrainConfig):
    """One training run: the ``train:`` section plus where its data and outputs live."""

    shards: str
    """Folder (local path or fsspec URI) holding ``sizes.json`` and the ``.tar`` shards."""
    output: str
    """Folder receiving ``checkpoints/``, ``metrics.jsonl`` and ``loss_curve.png``."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for ``shards`` and ``output`` (e.g. an S3 endpoint URL)."""
    data_fingerprint: str | None = None
    """What the shards were made from (the shard stage's manifest digest), for the record."""

    @classmethod
    def of(cls, section: TrainConfig, **where: Any) -> TrainRun:
        """The run of ``section`` with ``where`` (``shards``, ``output``, ...) added."""
        return cls(**dataclasses.asdict(section), **where)

    @property
    def checkpoint_dir(self) -> str:
        return posixpath.join(self.output, "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (saved in every checkpoint)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainRun:
        """Build from a resolved flat dict or a pipeline dict with ``storage`` and ``train``."""
        if "train" in data and isinstance(data["train"], dict):
            data = _flatten_pipeline(data, source)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown train keys {unknown}")
        missing = [k for k in ("shards", "output") if not data.get(k)]
        if missing:
            raise ValueError(f"{source}: missing {missing} (or give a pipeline config)")
        return cls(**data)


def resolve_model_config(cfg: TrainConfig) -> ModelConfig:
    """``train.model`` with the run's temperature and bias initialisation; refuses a logit
    bias that the loss would not train."""
    model = get_model_config(cfg.model)
    if cfg.loss == "clip":
        if model.init_logit_bias is not None:
            raise ValueError(
                f"train.model {cfg.model!r} has init_logit_bias {model.init_logit_bias} but "
                "train.loss is 'clip': a logit bias is SigLIP's and the CLIP loss would never "
                "train it (DDP stops on the unused parameter); set train.loss: siglip"
            )
        scale = model.init_logit_scale if cfg.init_logit_scale is None else cfg.init_logit_scale
        return dataclasses.replace(model, init_logit_scale=scale)
    own_bias = model.init_logit_bias is not None
    default_scale = model.init_logit_scale if own_bias else SIGLIP_INIT_LOGIT_SCALE
    default_bias = model.init_logit_bias if own_bias else SIGLIP_INIT_LOGIT_BIAS
    return dataclasses.replace(
        model,
        init_logit_scale=default_scale if cfg.init_logit_scale is None else cfg.init_logit_scale,
        init_logit_bias=default_bias if cfg.init_logit_bias is None else cfg.init_logit_bias,
    )


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


def load_train_config(path: str, **overrides: Any) -> TrainRun:
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
    return TrainRun.from_dict(data, source=path)
