"""Ground truth for near-duplicate detection: real offline images, planted copies, and
same-class look-alikes that must stay apart (used by ``bench/bench_dedup_quality.py`` and
``tests/curate/test_dedup_quality.py``).

Sources are Fashion-MNIST train images (28 px, grey), Google emoji (64 px, colour; skin-tone
variants join the pool as look-alikes) and openclipart drawings, rendered square at the
sizes the pipeline sees. Every source gets one copy per transform, drawn with ``rng``:

    jpeg        JPEG re-encoding at quality 30-95
    resize      resizing by 0.5-2x (log-uniform), bilinear or bicubic
    crop        a crop keeping 80-95 % of the area at a random place
    brightness  brightness and contrast each changed by up to +-20 %
    overlay     a small text or logo in a corner
    padding     padding or letterboxing in black, white or grey

A pool is every source (and look-alike) plus the copies of one transform; a found pair is
right when it joins a source and its own copy, and wrong otherwise (sources are distinct:
exact pixel repeats among the sources are removed first).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from demo import offline_data
from tasks.curate.near_dup import (
    MatchConfig,
    image_thumbnail,
    near_duplicate_pairs,
    thumbnails_array,
    thumbnails_resolution,
)
from tasks.curate.phash import flatten_alpha

TRANSFORMS: tuple[str, ...] = ("jpeg", "resize", "crop", "brightness", "overlay", "padding")
SIZES: tuple[int, ...] = (28, 64, 224)
TARGET_PRECISION = 0.99
TARGET_RECALL = {
    "jpeg": 0.95, "resize": 0.95, "brightness": 0.95, "crop": 0.80, "overlay": 0.80,
    "padding": 0.80,
}  # fmt: skip


_CLIPART_MAX_BYTES = 2_000_000
_CLIPART_MAX_SIDE = 512
_INK_LEVEL = 200
_MIN_INK = 0.05


@dataclass(frozen=True)
class Source:
    """One distinct image: its pixels at native size, where it comes from and its class."""

    image: Image.Image
    dataset: str
    label: str
    name: str


def fashion_sources(per_class: int, rng: np.random.Generator) -> list[Source]:
    """``per_class`` Fashion-MNIST train images of each class (exact repeats removed)."""
    images, labels = offline_data.fashion_mnist("train")
    out, seen = [], set()
    for label, class_name in enumerate(offline_data.FASHION_MNIST_CLASSES):
        for i in rng.permutation(np.flatnonzero(labels == label)):
            if images[i].tobytes() in seen:
                continue
            seen.add(images[i].tobytes())
            out.append(Source(Image.fromarray(images[i]), "fashion", class_name, f"fashion/{i}"))
            if sum(s.label == class_name for s in out) >= per_class:
                break
    return out


def emoji_sources(n: int, rng: np.random.Generator) -> list[Source]:
    """``n`` base emoji (no skin-tone variants: see bench/bench_dedup_quality.py)."""
    pool = offline_data.emoji()
    out = []
    for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False):
        e = pool[int(i)]
        with Image.open(e.path) as image:
            out.append(Source(flatten_alpha(image), "emoji", e.subcategory, f"emoji/{e.unified}"))
    return out


def clipart_sources(n: int, rng: np.random.Generator) -> list[Source]:
    """``n`` openclipart drawings on white, padded square; near-blank ones (under _MIN_INK of
    the pixels darker than _INK_LEVEL: the collection's many thin plain circles and frames,
    which are the same picture at every size) are left out."""
    pool = [(p, c) for p, c in offline_data.clipart() if p.stat().st_size < _CLIPART_MAX_BYTES]
    out = []
    for i in rng.permutation(len(pool)):
        path, _ = pool[int(i)]
        with Image.open(path) as image:
            image.thumbnail((_CLIPART_MAX_SIDE, _CLIPART_MAX_SIDE))
            flat = flatten_alpha(image)
        if np.mean(np.asarray(flat.convert("L")) < _INK_LEVEL) < _MIN_INK:
            continue
        side = max(flat.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(flat, ((side - flat.width) // 2, (side - flat.height) // 2))
        out.append(Source(square, "clipart", path.parent.name, f"clipart/{path.stem}"))
        if len(out) == n:
            break
    return out


def render(source: Source, size: int) -> Image.Image:
    """The source as the pipeline would see it: RGB, size x size."""
    resample = Image.Resampling.BICUBIC if size > source.image.width else Image.Resampling.BOX
    return source.image.convert("RGB").resize((size, size), resample)


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    side = max(8, round(image.width * factor))
    method = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)[int(rng.integers(2))]
    return image.resize((side, side), method)


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    scale = float(np.sqrt(rng.uniform(0.80, 0.95)))
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def _brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.2)))


def _overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A watermark-sized mark (about a tenth of the side) in a random corner."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    side = max(3, round(0.12 * min(w, h)))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    x = int(rng.choice([1, w - 1 - (3 * side if rng.random() < 0.5 else side)]))
    y = int(rng.choice([1, h - 1 - side]))
    if rng.random() < 0.5:
        font = ImageFont.load_default(size=side)
        draw.text((x, y), "shop", fill=colour, font=font)
    else:
        draw.ellipse((x, y, x + side, y + side), fill=colour)
    return out


def _padding(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    colour = [(0, 0, 0), (255, 255, 255), (128, 128, 128)][int(rng.integers(3))]
    if rng.random() < 0.5:  # letterbox to 16:9 or 4:3
        ratio = (16 / 9, 4 / 3)[int(rng.integers(2))]
        canvas = Image.new("RGB", (round(h * ratio), h), colour)
    else:
        pad = float(rng.uniform(0.05, 0.2))
        canvas = Image.new("RGB", (round(w * (1 + 2 * pad)), round(h * (1 + 2 * pad))), colour)
    canvas.paste(image, ((canvas.width - w) // 2, (canvas.height - h) // 2))
    return canvas


TRANSFORM_FUNCTIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "jpeg": _jpeg, "resize": _resize, "crop": _crop, "brightness": _brightness,
    "overlay": _overlay, "padding": _padding,
}  # fmt: skip


@dataclass
class Score:
    """Quality of the found pairs in one pool."""

    size: int
    transform: str
    copies: int
    found: int
    right: int
    seconds_per_image: float

    @property
    def precision(self) -> float:
        return self.right / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.copies if self.copies else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def meets_targets(self) -> bool:
        return self.precision >= TARGET_PRECISION and self.recall >= TARGET_RECALL[self.transform]


Example = tuple[Image.Image, Image.Image, float, bool]


def score_pool(
    sources: list[Source], size: int, transform: str, cfg: MatchConfig, seed: int
) -> tuple[Score, list[Example]]:
    """Plant one ``transform`` copy of every source at ``size``, run the matcher on sources
    and copies together, and score the pairs it finds. Also returns the found and the missed
    pairs (a, b, similarity or nan, right) for galleries."""
    rng = np.random.default_rng([seed, size, TRANSFORMS.index(transform)])
    originals = [render(s, size) for s in sources]
    copies = [TRANSFORM_FUNCTIONS[transform](render(s, size), rng) for s in sources]
    images = originals + copies
    started = time.perf_counter()
    blobs = [image_thumbnail(im) for im in images]
    thumbs, resolution = thumbnails_array(blobs), thumbnails_resolution(blobs)
    rows, cols, sims = near_duplicate_pairs(thumbs, cfg, resolution)
    seconds = time.perf_counter() - started
    n_orig = len(originals)
    right = (cols >= n_orig) & (rows == cols - n_orig)
    examples = [(images[i], images[j], float(s), bool(r))
                for i, j, s, r in zip(rows, cols, sims, right, strict=True)]  # fmt: skip
    found_copies = set(cols[right].tolist())
    for k in range(len(sources)):
        if n_orig + k not in found_copies:
            examples.append((originals[k], copies[k], float("nan"), True))
    score = Score(size, transform, len(sources), len(rows), int(right.sum()),
                  seconds / len(images))  # fmt: skip
    return score, examples


def planted_copy_scores(samples: pd.DataFrame, planted: dict[str, Any]) -> dict[str, Any]:
    """How curate did on the demo web's planted copies (``planted.json``): recall over the
    planted near copies (the copy or its original names the other in ``duplicate_of``) and
    precision over the rows dropped as ``near_duplicate`` (right when they and the row they
    duplicate are a planted original and copy)."""
    urls = zip(samples["key"], samples["url"], strict=True)
    path_of = {key: urlsplit(url).path for key, url in urls}
    key_of = {path: key for key, path in path_of.items()}
    planted_pairs = {frozenset((p["original"], p["copy"])) for p in planted["near_duplicates"]}
    planted_pairs |= {frozenset((p["original"], c)) for p in planted["exact_duplicates"]
                      for c in p["copies"]}  # fmt: skip
    duplicate_of = dict(zip(samples["key"], samples["duplicate_of"], strict=True))
    found = 0
    for pair in planted["near_duplicates"]:
        a, b = key_of.get(pair["original"]), key_of.get(pair["copy"])
        if a is not None and b is not None:
            found += duplicate_of[a] == b or duplicate_of[b] == a
    flagged = samples[samples["drop_near_duplicate"]]
    right = sum(
        frozenset((path_of[k], path_of.get(d, ""))) in planted_pairs
        for k, d in zip(flagged["key"], flagged["duplicate_of"], strict=True)
    )
    return {
        "planted_near_copies": len(planted["near_duplicates"]),
        "found": int(found),
        "recall": found / max(1, len(planted["near_duplicates"])),
        "near_duplicate_rows": len(flagged),
        "right": int(right),
        "precision": right / len(flagged) if len(flagged) else 1.0,
    }
