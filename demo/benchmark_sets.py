"""Built-in benchmark sets, converted offline from real labelled data into CLIP_benchmark's
WebDataset layout (``{out}/{name}/{split}/{0..n-1}.tar`` + ``nshards.txt``, ``classnames.txt``,
``zeroshot_classification_templates.txt``, ``dataset_type.txt``).

    python -m demo.benchmark_sets build [OUT_DIR] [--sets fashion_mnist mnist ...] [--force]

Sets: ``fashion_mnist`` and ``mnist`` (full test split, plus the first ``train_samples``
train images for linear probes), ``emoji_subcategory`` (every base emoji, labelled by its
Unicode subcategory) and ``emoji_retrieval`` (every base emoji with two captions).
Conversion is deterministic (tar members carry fixed metadata) and takes seconds; a set whose
``build.json`` matches this converter is not rebuilt.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from demo import offline_data
from demo.build_lock import one_builder
from model.atomic import atomic_folder
from model.tario import SampleWriter

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / ".cache" / "benchmarks"
FORMAT_VERSION = 1
SAMPLES_PER_SHARD = 5000

# Names that read naturally inside a prompt, in the singular form the demo web's captions
# use for each class ("pair of sandals", not "sandal"): label i is line i.
FASHION_MNIST_CLASSNAMES: tuple[str, ...] = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat",
    "pair of sandals", "shirt", "pair of sneakers", "bag", "pair of ankle boots",
)  # fmt: skip
# CLIP-paper style prompts (the ImageNet set, trimmed to what fits small grey product shots).
FASHION_MNIST_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a blurry photo of a {c}.",
    "a close-up photo of a {c}.",
    "a cropped photo of a {c}.",
    "a bad photo of a {c}.",
    "a photo of the {c}.",
    "a photo of a small {c}.",
    "a pixelated photo of the {c}.",
    "a grayscale photo of a {c}.",
    "a product photo of a {c}.",
)
MNIST_CLASSNAMES: tuple[str, ...] = offline_data.MNIST_CLASSES
MNIST_TEMPLATES: tuple[str, ...] = (
    'a photo of the number: "{c}".',  # CLIP's and CLIP_benchmark's MNIST prompt
    'a black and white photo of the number: "{c}".',
    "a photo of the handwritten digit {c}.",
    "a low resolution photo of the number {c}.",
)
EMOJI_TEMPLATES: tuple[str, ...] = (
    "an emoji from the group: {c}.",
    "an icon of the category {c}.",
    "a small picture from the {c} set.",
    "a {c} symbol.",
)
# Unicode subcategory names that do not read as words.
_SUBCATEGORY_NAMES = {
    "alphanum": "letters and numbers",
    "av-symbol": "audio and video symbol",
    "other-symbol": "other symbol",
    "other-object": "other object",
    "person-role": "person in a job or role",
}


@dataclass(frozen=True)
class Split:
    """One split's samples: (key, image PNG bytes, label member name, label bytes)."""

    name: str
    samples: Iterable[tuple[str, bytes, str, bytes]]


@dataclass(frozen=True)
class BenchmarkSet:
    dataset_type: str
    splits: list[Split]
    classnames: Sequence[str] | None = None
    templates: Sequence[str] | None = None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 pixels, (H, W) grey or (H, W, 3) RGB. Written directly: PIL's encoder
    costs ~0.4 ms per tiny image in set-up, which made conversion take tens of seconds."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"png_bytes: expected uint8 (H, W) or (H, W, 3), got {pixels.shape}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    # Each scanline starts with its filter type; 0 = none.
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def _emoji_png(path: Path) -> bytes:
    """An RGBA emoji flattened onto white (as a browser and img2dataset show it), as PNG."""
    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return png_bytes(np.round(rgb).astype(np.uint8))


def labelled_samples(
    images: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[str, bytes, str, bytes]]:
    """(key, PNG, "cls", label) for each image, keys numbered from 000000."""
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        yield f"{i:06d}", png_bytes(pixels), "cls", str(int(label)).encode()


def fashion_mnist_set(train_samples: int) -> BenchmarkSet:
    """Fashion-MNIST: the 10,000 test images, and the first ``train_samples`` train images."""
    test_x, test_y = offline_data.fashion_mnist("test")
    train_x, train_y = offline_data.fashion_mnist("train")
    splits = [
        Split("test", labelled_samples(test_x, test_y)),
        Split("train", labelled_samples(train_x[:train_samples], train_y[:train_samples])),
    ]
    return BenchmarkSet("classification", splits, FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES)


def fashion_mnist_validation_set(web_dir: Path, per_class: int = 1000) -> BenchmarkSet:
    """A validation split of Fashion-MNIST *train* images that the demo web in ``web_dir``
    never shows, ``per_class`` of each class (seeded): a demo recipe can be chosen on it
    without looking at the test set the README reports. An image is left out when its
    pixels are those of any 28 x 28 PNG the web serves (the garments, and the spare train
    images its planted cases draw). The split is named "test", the split the evaluate stage
    reads; it is not among ``SETS``, since it needs the web."""
    train_x, train_y = offline_data.fashion_mnist("train")
    shown = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for path in Path(web_dir).rglob("*.png"):
            try:
                with Image.open(path) as image:
                    if image.size == (28, 28):
                        shown.add(np.asarray(image.convert("L")).tobytes())
            except (OSError, Image.DecompressionBombError):
                continue  # the web's hostile files (bombs, truncated PNGs): not 28 x 28 pictures
    unseen = np.array([i for i in range(len(train_x)) if train_x[i].tobytes() not in shown])
    rng = np.random.default_rng(2026)
    chosen = np.sort(np.concatenate([
        rng.permutation(unseen[train_y[unseen] == label])[:per_class]
        for label in range(len(FASHION_MNIST_CLASSNAMES))
    ]))  # fmt: skip
    split = Split("test", labelled_samples(train_x[chosen], train_y[chosen]))
    return BenchmarkSet(
        "classification", [split], FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES
    )


def mnist_set(train_samples: int) -> BenchmarkSet:
    """MNIST: the 10,000 test digits, and the first ``train_samples`` train digits."""
    test_x, test_y = offline_data.mnist("test")
    train_x, train_y = offline_data.mnist("train")
    splits = [
        Split("test", labelled_samples(test_x, test_y)),
        Split("train", labelled_samples(train_x[:train_samples], train_y[:train_samples])),
    ]
    return BenchmarkSet("classification", splits, MNIST_CLASSNAMES, MNIST_TEMPLATES)


def _base_emoji() -> list[offline_data.Emoji]:
    return sorted(offline_data.emoji(include_skin_variants=False), key=lambda e: e.unified)


def subcategory_name(subcategory: str) -> str:
    """A Unicode emoji subcategory as words: ``animal-mammal`` -> ``animal mammal``."""
    return _SUBCATEGORY_NAMES.get(subcategory, subcategory.replace("-", " "))


def emoji_subcategory_set(min_per_class: int = 3) -> BenchmarkSet:
    """Base emoji (no skin-tone variants) labelled by subcategory; subcategories with fewer
    than ``min_per_class`` emoji are left out (too few to measure a recall on)."""
    emoji = _base_emoji()
    sizes = Counter(e.subcategory for e in emoji)
    subcategories = sorted(s for s, n in sizes.items() if n >= min_per_class)
    label = {s: i for i, s in enumerate(subcategories)}
    samples = (
        (e.unified.lower(), _emoji_png(e.path), "cls", str(label[e.subcategory]).encode())
        for e in emoji
        if e.subcategory in label
    )
    classnames = [subcategory_name(s) for s in subcategories]
    return BenchmarkSet("classification", [Split("test", samples)], classnames, EMOJI_TEMPLATES)


def emoji_captions(e: offline_data.Emoji) -> list[str]:
    """Two captions: the Unicode name in a sentence, and the name with its subcategory."""
    return [f"an icon showing {e.name}.", f"{e.name} ({subcategory_name(e.subcategory)})"]


def emoji_retrieval_set() -> BenchmarkSet:
    """Every base emoji with two captions (one per line of its ``.txt`` member)."""
    samples = (
        (e.unified.lower(), _emoji_png(e.path), "txt", "\n".join(emoji_captions(e)).encode())
        for e in _base_emoji()
    )
    return BenchmarkSet("retrieval", [Split("test", samples)])


def write_split(folder: Path, split: Split, samples_per_shard: int) -> int:
    """Write ``{folder}/{split}/{i}.tar`` and ``nshards.txt``; returns the sample count."""
    split_dir = folder / split.name
    split_dir.mkdir(parents=True)
    samples = iter(split.samples)
    count = shard = 0
    while chunk := list(itertools.islice(samples, samples_per_shard)):
        with open(split_dir / f"{shard}.tar", "wb") as stream, SampleWriter(stream) as tar:
            for key, image, label_ext, label in chunk:
                tar.write(key, {"png": image, label_ext: label})
        count += len(chunk)
        shard += 1
    (split_dir / "nshards.txt").write_text(f"{shard}\n")
    return count


def write_set(out: Path, bench: BenchmarkSet, samples_per_shard: int = SAMPLES_PER_SHARD) -> dict:
    """Write a set to ``out`` atomically (a temporary sibling, then a rename)."""
    with atomic_folder(out) as tmp:
        (tmp / "dataset_type.txt").write_text(bench.dataset_type + "\n")
        if bench.classnames is not None:
            (tmp / "classnames.txt").write_text("".join(f"{c}\n" for c in bench.classnames))
        if bench.templates is not None:
            templates = "".join(f"{t}\n" for t in bench.templates)
            (tmp / "zeroshot_classification_templates.txt").write_text(templates)
        counts = {s.name: write_split(tmp, s, samples_per_shard) for s in bench.splits}
        summary = {"format_version": FORMAT_VERSION, "dataset_type": bench.dataset_type,
                   "samples": counts, "classes": len(bench.classnames or [])}  # fmt: skip
        (tmp / "build.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


SETS: dict[str, Callable[[int], BenchmarkSet]] = {
    "fashion_mnist": fashion_mnist_set,
    "mnist": mnist_set,
    "emoji_subcategory": lambda _train: emoji_subcategory_set(),
    "emoji_retrieval": lambda _train: emoji_retrieval_set(),
}


def build_set(name: str, out: Path, train_samples: int = 10_000, force: bool = False) -> dict:
    """Build one set into the folder ``out`` unless its ``build.json`` is current; returns it."""
    if name not in SETS:
        raise ValueError(f"unknown benchmark set {name!r}; known: {sorted(SETS)}")
    marker = Path(out) / "build.json"
    with one_builder(Path(out)):
        if not force and marker.exists():
            done: dict = json.loads(marker.read_text())
            if done.get("format_version") == FORMAT_VERSION:
                log.info("%s: up to date at %s", name, out)
                return done
        summary = write_set(Path(out), SETS[name](train_samples))
    log.info("%s: wrote %s to %s", name, summary["samples"], out)
    return summary


BUILDERS: dict[str, Callable[[Path], dict]] = {
    name: functools.partial(build_set, name) for name in SETS
}
"""Each built-in set by name: ``BUILDERS["mnist"](folder)`` builds it into ``folder``."""


def build(
    out_dir: Path = DEFAULT_OUT,
    sets: Sequence[str] = tuple(SETS),
    train_samples: int = 10_000,
    force: bool = False,
) -> dict[str, dict]:
    """Build the named sets under ``out_dir/<name>``; returns each set's ``build.json``."""
    return {name: build_set(name, Path(out_dir) / name, train_samples, force) for name in sets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.benchmark_sets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="convert offline data into CLIP_benchmark WDS sets")
    cmd.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT)
    cmd.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    cmd.add_argument("--train-samples", type=int, default=10_000)
    cmd.add_argument("--force", action="store_true", help="rebuild sets that are up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.out_dir, args.sets, args.train_samples, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
