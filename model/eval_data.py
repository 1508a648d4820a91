"""Evaluation datasets in CLIP_benchmark's WebDataset layout, local or on an object store.

The layout ``clip_benchmark.datasets.builder.build_wds_dataset`` reads::

    {root}/{split}/nshards.txt          number of shards (optional here: else every *.tar)
    {root}/{split}/0.tar, 1.tar, ...    samples: an image (.webp/.png/.jpg/.jpeg) and a
                                        .cls label (classification) or .txt captions, one
                                        per line (retrieval)
    {root}/classnames.txt               one class name per line, label i is line i
    {root}/zeroshot_classification_templates.txt   one prompt per line, "{c}" = class name
    {root}/dataset_type.txt             "retrieval" for caption sets; absent = classification

Text files are read as CLIP_benchmark reads them (``line.strip()`` for each line of
``splitlines()``), so both see the same class names and prompts. Every defect (a missing
file, a blank class name, a corrupt tar, a label out of range, an empty split) raises
``EvalDataError`` naming the file; nothing is skipped silently.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from model.tario import (
    CLIP_BENCHMARK_IMAGE_ORDER,
    Sample,
    TarReadError,
    image_extension,
    open_samples,
)

log = logging.getLogger(__name__)

CLASSIFICATION, RETRIEVAL = "classification", "retrieval"


class EvalDataError(ValueError):
    """An evaluation dataset that cannot be read; the message names the file at fault."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset folder declares beside its shards."""

    root: str
    dataset_type: str
    classnames: list[str] | None
    templates: list[str] | None


def _fs(root: str, storage_options: dict[str, Any] | None) -> fsspec.AbstractFileSystem:
    fs, _ = fsspec.core.url_to_fs(root, **(storage_options or {}))
    return fs


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts)


def read_lines(path: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Lines of a text file as CLIP_benchmark reads them: ``line.strip()`` per line.

    A blank line (which CLIP_benchmark would turn into an empty class name or prompt) raises.
    """
    try:
        with fsspec.open(path, "rt", encoding="utf-8", **(storage_options or {})) as f:
            text = f.read()
    except FileNotFoundError as e:
        raise EvalDataError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}: not UTF-8 text ({e})") from e
    lines = [line.strip() for line in text.splitlines()]
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise EvalDataError(f"{path}: blank line(s) {blank[:10]}; every line must name something")
    if not lines:
        raise EvalDataError(f"{path}: empty file")
    return lines


def read_dataset_info(
    root: str, needs_templates: bool = False, storage_options: dict[str, Any] | None = None
) -> DatasetInfo:
    """Read ``dataset_type.txt``, and for classification ``classnames.txt`` (required) and
    ``zeroshot_classification_templates.txt`` (required when ``needs_templates``)."""
    root = root.rstrip("/")
    fs = _fs(root, storage_options)
    if not fs.exists(root):
        raise EvalDataError(f"{root}: dataset folder not found")
    type_path = _join(root, "dataset_type.txt")
    dataset_type = CLASSIFICATION
    if fs.exists(type_path):
        dataset_type = read_lines(type_path, storage_options)[0].lower()
    if dataset_type == RETRIEVAL:
        return DatasetInfo(root, dataset_type, None, None)
    if dataset_type != CLASSIFICATION:
        raise EvalDataError(
            f"{type_path}: dataset type {dataset_type!r} is not supported "
            f"({CLASSIFICATION!r} or {RETRIEVAL!r})"
        )
    classnames = read_lines(_join(root, "classnames.txt"), storage_options)
    templates = None
    template_path = _join(root, "zeroshot_classification_templates.txt")
    if needs_templates:
        templates = read_lines(template_path, storage_options)
        bad = [t for t in templates if "{c}" not in t]
        if bad:
            raise EvalDataError(f"{template_path}: templates without '{{c}}': {bad[:5]}")
    return DatasetInfo(root, dataset_type, classnames, templates)


def shard_urls(root: str, split: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The split's tar URLs: ``0.tar .. n-1.tar`` per ``nshards.txt`` (as CLIP_benchmark),
    else every ``*.tar`` in the split folder, sorted."""
    split_dir = _join(root, split)
    fs = _fs(root, storage_options)
    nshards_path = _join(split_dir, "nshards.txt")
    if fs.exists(nshards_path):
        text = read_lines(nshards_path, storage_options)[0]
        try:
            nshards = int(text)
        except ValueError as e:
            raise EvalDataError(f"{nshards_path}: not an integer: {text!r}") from e
        urls = [_join(split_dir, f"{i}.tar") for i in range(nshards)]
        missing = [u for u in urls if not fs.exists(u)]
        if missing:
            raise EvalDataError(f"{nshards_path} says {nshards} shards; missing: {missing[:5]}")
    else:
        protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
        found = sorted(fs.glob(_join(split_dir, "*.tar")))
        urls = [p if p.startswith(protocol) else protocol + p for p in found]
    if not urls:
        raise EvalDataError(f"{split_dir}: empty split (no .tar shards)")
    return urls


def _decode_image(data: bytes, where: str) -> Image.Image:
    try:
        with io.BytesIO(data) as stream:
            image = Image.open(stream)
            image.load()
            # webdataset's "pil" decoder, which CLIP_benchmark uses, hands over RGB images.
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise EvalDataError(f"{where}: not a readable image ({e})") from e


def _tar_samples(url: str, storage_options: dict[str, Any] | None) -> Iterator[Sample]:
    """Samples of one tar (``model.tario``); a tar that does not read to its end raises."""
    try:
        yield from open_samples(url, storage_options)
    except (TarReadError, OSError) as e:
        raise EvalDataError(f"{url}: corrupt or unreadable tar ({type(e).__name__}: {e})") from e


def _image_of(sample: Sample, where: str) -> Image.Image:
    ext = image_extension(sample, CLIP_BENCHMARK_IMAGE_ORDER)
    if ext is None:
        raise EvalDataError(f"{where}: no image member (.{'/.'.join(CLIP_BENCHMARK_IMAGE_ORDER)})")
    return _decode_image(sample[ext], f"{where}.{ext}")


def _label_of(sample: Sample, where: str, num_classes: int, classnames_path: str) -> int:
    if "cls" not in sample:
        raise EvalDataError(f"{where}: no .cls label member")
    text = sample["cls"].decode("utf-8", errors="replace").strip()
    try:
        label = int(text)
    except ValueError as e:
        raise EvalDataError(f"{where}.cls: label {text!r} is not an integer") from e
    if not 0 <= label < num_classes:
        raise EvalDataError(
            f"{where}.cls: label {label} out of range: {classnames_path} has {num_classes} classes"
        )
    return label


def _captions_of(sample: Sample, where: str) -> list[str]:
    if "txt" not in sample:
        raise EvalDataError(f"{where}: no .txt captions member")
    captions = sample["txt"].decode("utf-8").splitlines()  # CLIP_benchmark: str.splitlines
    if not captions:
        raise EvalDataError(f"{where}.txt: no captions")
    return captions


class WdsEvalDataset(IterableDataset):
    """(transformed image, label) or (transformed image, [captions]) from a split's shards.

    DataLoader workers each read a disjoint subset of the shards. ``samples_read`` counts what
    this process yielded (all of it when ``num_workers=0``).
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        transform: Callable[[Image.Image], torch.Tensor],
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.info = info
        self.split = split
        self.transform = transform
        self.storage_options = storage_options
        self.urls = shard_urls(info.root, split, storage_options)
        self.samples_read = 0
        self.keys_read: list[tuple[str, str]] = []
        """(tar URL, sample key) of each sample yielded in this process, in order: which
        image each row of the logits is (all of them when ``num_workers=0``)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        worker = get_worker_info()
        urls = self.urls if worker is None else self.urls[worker.id :: worker.num_workers]
        retrieval = self.info.dataset_type == RETRIEVAL
        classnames_path = _join(self.info.root, "classnames.txt")
        num_classes = len(self.info.classnames or [])
        for url in urls:
            before = self.samples_read
            for sample in _tar_samples(url, self.storage_options):
                where = f"{url}:{sample['__key__']}"
                image = self.transform(_image_of(sample, where))
                target: Any = (
                    _captions_of(sample, where)
                    if retrieval
                    else _label_of(sample, where, num_classes, classnames_path)
                )
                self.samples_read += 1
                self.keys_read.append((url, sample["__key__"]))
                yield image, target
            if self.samples_read == before:
                raise EvalDataError(f"{url}: empty shard (no samples in the tar)")
            log.debug("%s: %d samples", url, self.samples_read - before)


def collate_with_captions(
    batch: list[tuple[torch.Tensor, list[str]]],
) -> tuple[torch.Tensor, list[list[str]]]:
    """Stack images; keep each image's caption list as it is (several captions per image)."""
    return torch.stack([image for image, _ in batch]), [captions for _, captions in batch]


def make_loader(
    dataset: WdsEvalDataset, batch_size: int, workers: int = 0
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset``: labels become a LongTensor, captions stay lists.

    Workers read whole shards, so more workers than shards would only sit idle.
    """
    retrieval = dataset.info.dataset_type == RETRIEVAL
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=min(workers, len(dataset.urls)),
        collate_fn=collate_with_captions if retrieval else None,
    )
