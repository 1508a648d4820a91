"""Training augmentation as in CLIP and OpenCLIP: no flips; random-resized crops of 90-100% of
the area at aspect 3:4..4:3, for images of every shape (panoramas included), decoded at a
size where even the smallest crop keeps full resolution."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from model.clip import create_model
from model.data import LoaderConfig, LoaderPosition, ShardStream, _crop_box, decode_size
from model.train import Distributed, make_loader
from model.train_config import TrainConfig, TrainRun

DEFAULT = TrainConfig()
SCALE = (DEFAULT.crop_scale_min, 1.0)
RATIO = (DEFAULT.crop_ratio_min, DEFAULT.crop_ratio_max)
# (width, height): square, the range's ends, just outside it, 2:1 and 3:1 panoramas, a tower.
SHAPES = [(400, 400), (400, 300), (300, 400), (500, 300), (600, 300), (900, 300), (200, 700)]


def test_defaults_are_openclip_and_the_paper() -> None:
    assert DEFAULT.hflip is False
    assert SCALE == (0.9, 1.0)
    assert pytest.approx((3 / 4, 4 / 3)) == RATIO


def _half_black_png(width: int = 64, height: int = 48) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, width // 2 :] = 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_the_loader_never_flips_by_default(fashion_shards, tmp_path) -> None:
    cfg = TrainRun(shards=str(fashion_shards), output=str(tmp_path), workers=0)
    env = Distributed(0, 1, torch.device("cpu"))
    loader, _ = make_loader(cfg, env, create_model(cfg.model), None)
    stream = ShardStream(loader.cfg, 0, 1, LoaderPosition.start(1, 0))
    sample = ("x/0", {"png": _half_black_png(), "txt": b"black on the left, white on the right"})
    for seed in range(100):
        pixels, _ = stream._decode(sample, random.Random(seed))
        assert pixels[:, :4].mean() < 20 and pixels[:, -4:].mean() > 235, f"flipped (seed {seed})"


def _largest_in_range(width: int, height: int) -> tuple[int, int]:
    """The fallback crop: the whole image with its aspect ratio clamped into RATIO."""
    if width / height > RATIO[1]:
        return round(height * RATIO[1]), height
    if width / height < RATIO[0]:
        return width, round(width / RATIO[0])
    return width, height


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_crops_stay_in_the_aspect_and_scale_ranges(width: int, height: int) -> None:
    rng = random.Random(0)
    lefts, tops = set(), set()
    for _ in range(500):
        left, top, right, bottom = _crop_box(rng, width, height, SCALE, RATIO)
        w, h = right - left, bottom - top
        assert left >= 0 and right <= width and top >= 0 and bottom <= height
        # Rounding to whole pixels moves the aspect by at most half a pixel per side.
        assert RATIO[0] * (h - 0.5) / (h + 0.5) <= w / h <= RATIO[1] * (h + 0.5) / (h - 0.5)
        area = w * h / (width * height)
        if (w, h) != _largest_in_range(width, height) or area >= SCALE[0]:
            assert SCALE[0] - 0.01 <= area <= 1.0, (w, h)
        lefts.add(left)
        tops.add(top)
    # Every shape is augmented: crops move, panoramas' too.
    assert len(lefts) > 1 or len(tops) > 1


def test_panoramas_get_the_largest_crop_in_the_aspect_range() -> None:
    rng = random.Random(1)
    for width, height in [(900, 300), (200, 700)]:
        boxes = {_crop_box(rng, width, height, SCALE, RATIO) for _ in range(50)}
        sizes = {(r - left, b - t) for left, t, r, b in boxes}
        assert sizes == {_largest_in_range(width, height)}
        assert len(boxes) > 10  # at random positions along the long side


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_the_decode_size_keeps_every_crop_at_full_resolution(width: int, height: int) -> None:
    size = 224
    decoded_w, decoded_h = decode_size(width * 4, height * 4, size, SCALE, RATIO)
    assert decoded_w / decoded_h == pytest.approx(width / height, rel=0.01)
    rng = random.Random(2)
    for _ in range(500):  # the worst case: JPEG draft gives exactly the requested size
        left, top, right, bottom = _crop_box(rng, decoded_w, decoded_h, SCALE, RATIO)
        assert min(right - left, bottom - top) >= size - 1
    # Not more than needed: the smallest crop's short side is close to the output size.
    smallest = math.sqrt(decoded_w * decoded_h * SCALE[0] * min(RATIO[0], 1 / RATIO[1]))
    assert min(smallest, decoded_w, decoded_h) < size + 2


def test_jpeg_draft_decodes_at_least_the_decode_size() -> None:
    out = io.BytesIO()
    Image.new("RGB", (1800, 600), (90, 120, 200)).save(out, format="JPEG")
    with Image.open(io.BytesIO(out.getvalue())) as img:
        want = decode_size(img.width, img.height, 224, SCALE, RATIO)
        img.draft("RGB", want)
        assert img.size[0] >= want[0] and img.size[1] >= want[1]
        assert img.size[0] < 1800  # decoded at a reduced scale
    assert LoaderConfig([], [], 1, 28, 32).hflip is False
