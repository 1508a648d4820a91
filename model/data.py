"""WebDataset shards -> training batches: uint8 images (B, S, S, 3) and token ids (B, T).

Each rank runs ``workers`` data-loader processes ("readers"; one in-process reader when
``workers`` is 0). Reader ``g = rank * W + w`` of ``G = world * W`` reads an endless stream:

- epoch by epoch, the shard list is permuted (seed + epoch) and reader ``g`` takes every
  G-th shard (``split``), or draws ``ceil(n / G)`` shards with replacement (``resampled``);
  with fewer shards than readers ``split`` is refused up front, never a silent stall;
- tar members are grouped into samples by key, shuffled in a per-reader buffer, decoded
  (JPEG/PNG/WebP), randomly cropped (and flipped, when asked), and batched; captions are tokenised per
  batch. A sample that does not decode is skipped and counted, never fatal.
- with ``decode_device`` set (``train.decode_device: cuda``), readers decode only what is not
  a plain RGB or greyscale JPEG; of the JPEGs they read the header, draw the same crop and
  flip, and ship the bytes: ``next_batch`` decodes and resizes them on the device in one
  batch (``model.device_decode``, nvJPEG).

Streams never end, so every rank takes the same number of steps (the number of steps, not
the data, ends training: no rank waits on a peer that ran out). Randomness comes only from
(seed, reader, epoch, batch index), so a reader can be fast-forwarded: ``LoaderPosition``
records, per reader, the raw samples and batches the training loop consumed, and a loader
built from it continues exactly where the old one stopped.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from model.device_decode import decode_crops, require_device
from model.tario import IMAGE_EXTENSIONS, image_extension, open_samples
from model.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

RawSample = tuple[str, dict[str, bytes]]  # (shard/key, {extension: bytes})
_MEMBERS = (*IMAGE_EXTENSIONS, "txt")
_GPU_MODES = ("RGB", "L")  # JPEGs the device decodes; CMYK and others stay with PIL


class Job(NamedTuple):
    """A JPEG left to the device: its bytes, crop box (left, top, right, bottom), flip."""

    data: bytes
    box: tuple[int, int, int, int]
    flip: bool


@dataclass(frozen=True)
class LoaderConfig:
    """What the loader needs; sizes in pixels / tokens, ``batch_size`` per rank."""

    shards: list[str]
    sizes: list[int]
    batch_size: int
    image_size: int
    context_length: int
    workers: int = 0
    seed: int = 0
    sampling: str = "split"
    shuffle_buffer: int = 2000
    decoded_cache_mb: int = 0
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    vocab: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    decode_device: str | None = None
    """None: readers decode every image (PIL); a torch device: JPEGs are decoded there."""


@dataclass
class LoaderPosition:
    """Per-reader progress of one rank: raw samples read (decoded or skipped) and batches
    taken, in reader order; ``batches`` is the rank's total."""

    world: int
    workers: int
    raw: list[int]
    taken: list[int]
    batches: int = 0
    skipped: int = 0

    @classmethod
    def start(cls, world: int, workers: int) -> LoaderPosition:
        n = max(workers, 1)
        return cls(world, workers, [0] * n, [0] * n)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_shard_list(folder: str, storage_options: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Shard URIs and sample counts from ``{folder}/sizes.json`` (OpenCLIP's format)."""
    uri = posixpath.join(folder, "sizes.json")
    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            sizes = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri} not found: run the shard stage first") from e
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"{uri}: expected a non-empty mapping of shard name -> sample count")
    names = sorted(sizes)
    return [posixpath.join(folder, n) for n in names], [int(sizes[n]) for n in names]


def resolve_sampling(requested: str, n_shards: int, world: int, workers: int) -> str:
    """``split`` or ``resampled``; raises when ``split`` would leave a reader without shards."""
    readers = world * max(workers, 1)
    if requested == "resampled" or (requested == "auto" and n_shards < readers):
        if requested == "auto":
            log.warning(
                "%d shards for %d ranks x %d workers = %d readers: sampling shards with "
                "replacement (sampling: resampled)",
                n_shards,
                world,
                max(workers, 1),
                readers,
            )
        return "resampled"
    if n_shards < readers:
        raise ValueError(
            f"{n_shards} shards cannot be split over {world} ranks x {max(workers, 1)} "
            f"workers = {readers} readers (each needs at least one shard): write more, "
            "smaller shards (shard.samples_per_shard), lower train.workers, or set "
            "train.sampling to 'resampled' or 'auto'"
        )
    return "split"


def training_caption(data: bytes) -> str:
    """A sample's ``.txt`` as training reads it; raises UnicodeDecodeError (a ValueError, so
    the loader skips the sample) when it is not UTF-8."""
    return data.decode("utf-8").strip()


def _tar_samples(uri: str, storage_options: dict[str, Any]) -> Iterator[RawSample]:
    """Samples of one tar with their image and caption members (``model.tario``)."""
    for sample in open_samples(uri, storage_options, _MEMBERS):
        members = {ext: data for ext, data in sample.items() if not ext.startswith("__")}
        yield f"{uri}/{sample['__key__']}", members


def _crop_box(
    rng: random.Random,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom), from a seeded generator:
    ``scale`` of the area at an aspect ratio (width / height) drawn log-uniformly in ``ratio``.

    After 10 misses (an image too wide or tall for the range), torchvision's fallback: the
    whole image with its aspect ratio clamped into ``ratio``. torchvision centres that crop;
    here it is placed at random along the long side, so panoramas are still augmented.
    """
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < ratio[0]:
        h = min(height, round(width / ratio[0]))
    elif width / height > ratio[1]:
        w = min(width, round(height * ratio[1]))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return left, top, left + w, top + h


def decode_size(
    width: int, height: int, size: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int]:
    """The smallest (width, height) a ``width x height`` image may be decoded at (JPEG draft
    mode) so that every crop ``_crop_box`` can draw still has both sides >= ``size``.

    A crop of area fraction s and aspect r has short side sqrt(W * H * s * min(r, 1/r)); the
    fallback crop's short side is the image's.
    """
    narrowest = min(ratio[0], 1 / ratio[1])
    factor = max(size / math.sqrt(width * height * scale[0] * narrowest), size / min(width, height))
    return math.ceil(width * factor), math.ceil(height * factor)


def _pack(jobs: dict[int, Job]) -> dict[str, Any]:
    """A batch's device jobs as tensors and a list of bytes (what a worker pipe carries)."""
    return {
        "slots": torch.tensor(list(jobs), dtype=torch.int64),
        "data": [job.data for job in jobs.values()],
        "boxes": torch.tensor([job.box for job in jobs.values()], dtype=torch.int64).view(-1, 4),
        "flips": torch.tensor([job.flip for job in jobs.values()], dtype=torch.bool),
    }


def resize_crop(image: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The ``box`` (left, top, right, bottom) of an RGB image resized to (size, size, 3) uint8,
    bicubic with antialiasing (PIL's kernel). From 64 px up by torch's uint8 kernel for
    channels-last images, within a few levels of PIL's ``resize`` and ~4x faster at 224 px
    (``bench/bench_loader.py --image-size 224``); below, where a torch call costs more than
    the whole resize, by PIL."""
    if size < 64:
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))
    left, top, right, bottom = box
    crop = torch.from_numpy(np.array(image)[top:bottom, left:right]).permute(2, 0, 1)[None]
    # Channels-last in, so channels-last out: the (S, S, 3) result is then contiguous.
    crop = crop.contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(crop, (size, size), mode="bicubic", antialias=True)
    return resized[0].permute(1, 2, 0).numpy()


class DecodedCache:
    """What a reader keeps in memory, up to ``budget`` bytes: decoded RGB images by sample
    name, and whole shards' samples (their image and caption bytes) by URI, so that a later
    epoch neither decodes a kept image nor reads and parses its shard again (a third of a
    cached batch's time on the demo). Once full it keeps what it holds (an epoch reads every
    sample once, so evicting would only churn)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self._images: dict[str, Image.Image] = {}
        self._shards: dict[str, list[RawSample]] = {}

    def get(self, name: str) -> Image.Image | None:
        return self._images.get(name)

    def put(self, name: str, image: Image.Image) -> None:
        size = image.width * image.height * len(image.getbands())
        if self.used + size <= self.budget:
            self._images[name] = image
            self.used += size

    def shard(self, uri: str) -> list[RawSample] | None:
        """The samples of shard ``uri`` in their order, if a full read of it was kept."""
        return self._shards.get(uri)

    def read_shard(self, uri: str, samples: Iterator[RawSample]) -> Iterator[RawSample]:
        """``samples`` (shard ``uri``'s, as read) passed through; kept once the shard has been
        read to its end, if its members' bytes fit in what is left of the budget."""
        kept: list[RawSample] | None = []
        size = 0
        for sample in samples:
            if kept is not None:
                size += sum(len(data) for data in sample[1].values())
                if self.used + size <= self.budget:
                    kept.append(sample)
                else:
                    kept = None  # too big to keep: stream it as before
            yield sample
        # Images decoded while the shard was read may have taken part of the room meanwhile.
        if kept is not None and self.used + size <= self.budget:
            self._shards[uri] = kept
            self.used += size


class ShardStream(IterableDataset):
    """The endless batch stream of every reader of one rank (see the module docstring)."""

    def __init__(self, cfg: LoaderConfig, rank: int, world: int, position: LoaderPosition):
        super().__init__()
        self.cfg, self.rank, self.world, self.position = cfg, rank, world, position
        self.readers = max(cfg.workers, 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        # Batch k of the rank comes from physical worker k % W (DataLoader's round robin);
        # rotating the roles keeps the old order when a loader restarts mid-way.
        reader = (physical + self.position.batches) % self.readers
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return self._batches(reader)

    def _raw_stream(self, reader: int, cache: DecodedCache) -> Iterator[RawSample]:
        """Samples of this reader's shards, epoch after epoch, through the shuffle buffer; a
        shard that ``cache`` kept is not read again."""
        cfg, g = self.cfg, self.rank * self.readers + reader
        readers, n = self.world * self.readers, len(cfg.shards)
        shuffle = random.Random(f"{cfg.seed}-{g}")
        buffer: list[RawSample] = []
        epoch = 0
        while True:
            seen = 0
            if cfg.sampling == "split":
                order = np.random.default_rng([cfg.seed, epoch]).permutation(n)[g::readers]
            else:
                order = np.random.default_rng([cfg.seed, epoch, g]).integers(
                    0, n, math.ceil(n / readers)
                )
            for index in order:
                uri = cfg.shards[index]
                kept = cache.shard(uri)
                samples = (
                    iter(kept)
                    if kept is not None
                    else cache.read_shard(uri, _tar_samples(uri, cfg.storage_options))
                )
                for sample in samples:
                    seen += 1
                    if len(buffer) < cfg.shuffle_buffer:
                        buffer.append(sample)
                        continue
                    if buffer:
                        slot = shuffle.randrange(len(buffer))
                        buffer[slot], sample = sample, buffer[slot]
                    yield sample
            if not seen:
                shards = [cfg.shards[i] for i in order]
                raise RuntimeError(f"reader {g}: its shards hold no samples: {shards}")
            epoch += 1

    def _decode(
        self, sample: RawSample, rng: random.Random, cache: DecodedCache | None = None
    ) -> tuple[np.ndarray | Job, str]:
        """(S, S, 3) uint8 crop, or the ``Job`` of a JPEG left to the device, and the caption;
        raises ValueError on a bad sample. The decoded image comes from ``cache`` when it
        holds the sample, and goes there when it does not (device JPEGs never do)."""
        name, members = sample
        ext = image_extension(members)
        if ext is None or "txt" not in members:
            raise ValueError(f"{name}: needs an image and a .txt, has {sorted(members)}")
        caption = training_caption(members["txt"])
        size, scale, ratio = self.cfg.image_size, self.cfg.crop_scale, self.cfg.crop_ratio
        cache = cache if cache is not None else DecodedCache(0)
        rgb = cache.get(name)
        if rgb is None:
            with Image.open(io.BytesIO(members[ext])) as img:
                if (
                    self.cfg.decode_device is not None
                    and img.format == "JPEG"
                    and img.mode in _GPU_MODES
                ):
                    # The device decodes at full size (no draft): the crop box is drawn on it.
                    box = _crop_box(rng, img.width, img.height, scale, ratio)
                    return Job(members[ext], box, self.cfg.hflip and rng.random() < 0.5), caption
                # JPEG can decode at 1/2..1/8 scale; keep enough pixels for the smallest crop.
                img.draft("RGB", decode_size(img.width, img.height, size, scale, ratio))
                rgb = img.convert("RGB")
            cache.put(name, rgb)
        pixels = resize_crop(rgb, _crop_box(rng, rgb.width, rgb.height, scale, ratio), size)
        if self.cfg.hflip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        return pixels, caption

    def _batches(self, reader: int) -> Iterator[dict[str, Any]]:
        cfg, pos = self.cfg, self.position
        tokenizer = get_tokenizer(cfg.vocab, context_length=cfg.context_length)
        g = self.rank * self.readers + reader
        raw, taken = pos.raw[reader], pos.taken[reader]
        cache = DecodedCache(cfg.decoded_cache_mb << 20)
        stream = self._raw_stream(reader, cache)
        for _ in range(raw):  # fast-forward without decoding
            next(stream)
        failures_in_a_row = 0
        while True:
            rng = random.Random(f"{cfg.seed}-{g}-{taken}")
            images = np.empty((cfg.batch_size, cfg.image_size, cfg.image_size, 3), np.uint8)
            captions: list[str] = []
            jobs: dict[int, Job] = {}  # batch slot -> JPEG for the device
            skipped = 0
            for sample in stream:
                raw += 1
                try:
                    pixels, caption = self._decode(sample, rng, cache)
                except (ValueError, OSError, Image.DecompressionBombError) as e:
                    skipped += 1
                    failures_in_a_row += 1
                    log.warning("skipped a corrupt sample: %s", e)
                    # A whole dataset's worth of failures means nothing decodes: stop loudly.
                    if failures_in_a_row > sum(cfg.sizes):
                        raise RuntimeError(f"reader {g}: no sample decodes; last: {e}") from e
                    continue
                failures_in_a_row = 0
                if isinstance(pixels, Job):
                    jobs[len(captions)] = pixels
                else:
                    images[len(captions)] = pixels
                captions.append(caption)
                if len(captions) == cfg.batch_size:
                    break
            taken += 1
            yield {
                "images": torch.from_numpy(images),
                "texts": tokenizer(captions),
                "reader": reader,
                "raw": raw,
                "taken": taken,
                "skipped": skipped,
                "jobs": _pack(jobs),
            }


class TrainLoader:
    """Iterates (images uint8 (B, S, S, 3), texts (B, T)) and tracks ``position``."""

    def __init__(
        self, cfg: LoaderConfig, rank: int, world: int, position: LoaderPosition | None = None
    ) -> None:
        self.cfg = cfg
        fresh = LoaderPosition.start(world, cfg.workers)
        if position is not None and (position.world, position.workers) != (world, cfg.workers):
            log.warning(
                "loader position saved for %d ranks x %d workers, now %d x %d: the data "
                "order restarts (not an exact resume)",
                position.world,
                position.workers,
                world,
                cfg.workers,
            )
            position = None
        self.position = position if position is not None else fresh
        dataset = ShardStream(cfg, rank, world, self.position)
        self._loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=cfg.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=cfg.workers > 0,
            prefetch_factor=4 if cfg.workers > 0 else None,
        )
        self._iter: Iterator[dict[str, Any]] | None = None
        self._device = None if cfg.decode_device is None else require_device(cfg.decode_device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch; its reader's progress is recorded in ``position``. Images are on
        ``decode_device`` when one is set, else on the CPU."""
        if self._iter is None:
            self._iter = iter(self._loader)
        batch = next(self._iter)
        pos, reader = self.position, int(batch["reader"])
        pos.raw[reader], pos.taken[reader] = int(batch["raw"]), int(batch["taken"])
        pos.batches += 1
        pos.skipped += int(batch["skipped"])
        images, texts = batch["images"], batch["texts"]
        if self._device is not None:
            images, texts, lost = self._decode_jobs(images, texts, batch["jobs"])
            pos.skipped += lost
        return images, texts

    def _decode_jobs(
        self, images: torch.Tensor, texts: torch.Tensor, jobs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The batch on the device with its JPEGs decoded there, and how many did not decode:
        their slots get a copy of a decoded sample, its image and its caption (the batch keeps
        its size; rare, as the reader has already parsed each header)."""
        assert self._device is not None
        images = images.to(self._device, non_blocking=True)
        if not jobs["data"]:
            return images, texts, 0
        pixels, ok = decode_crops(
            jobs["data"], jobs["boxes"], jobs["flips"], self.cfg.image_size, self._device
        )
        slots = jobs["slots"].to(self._device)
        images[slots] = pixels
        lost = int((~ok).sum())
        if lost:
            good = slots[ok.to(self._device)]
            if len(good) == 0:
                raise RuntimeError("no JPEG of the batch decodes on " + str(self._device))
            bad = slots[~ok.to(self._device)]
            images[bad] = images[good[0]].clone()
            texts = texts.clone()
            texts[bad.cpu()] = texts[good[0].cpu()].clone()
        return images, texts, lost
