"""The near-duplicate matcher on the demo web's own images, as the demo downloads them
(28 px, centre-cropped): every planted copy group ends up in one group (so exactly one member
survives), and no two different Fashion-MNIST images are merged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from demo.offline_data import fashion_mnist
from flows.demo import ensure_demo_web
from tasks.core.config import CurateConfig
from tasks.curate.dedup import match_config
from tasks.curate.near_dup import (
    image_thumbnail,
    near_duplicate_pairs,
    thumbnails_array,
    thumbnails_resolution,
)
from tasks.curate.phash import flatten_alpha

DOWNLOAD_SIDE = 28  # configs/demo.yaml download.image_size, resize_mode center_crop


def _as_downloaded(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.thumbnail((256, 256))  # huge clipart: a quicker decode, the same 28 px result
        return ImageOps.fit(flatten_alpha(image), (DOWNLOAD_SIDE, DOWNLOAD_SIDE),
                            Image.Resampling.LANCZOS)  # fmt: skip


def _native_detail(path: Path) -> float:
    """As sql/curate/rules.sql: the web image's side over the downloaded one's."""
    with Image.open(path) as image:
        return min(1.0, max(image.width, image.height) / DOWNLOAD_SIDE)


@pytest.fixture(scope="module")
def demo_groups():
    site = ensure_demo_web()
    planted = json.loads((site / "planted.json").read_text())
    paths = sorted({p["url"] for p in planted["pairs"] if p["url"].startswith("/img/")})
    paths = [p for p in paths if p.endswith((".png", ".jpg"))]
    files = [site / p.lstrip("/") for p in paths]
    blobs = [image_thumbnail(_as_downloaded(f)) for f in files]
    resolution = thumbnails_resolution(blobs, np.array([_native_detail(f) for f in files]))
    rows, cols, _ = near_duplicate_pairs(thumbnails_array(blobs), match_config(CurateConfig()),
                                         resolution)  # fmt: skip
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(paths), len(paths)))
    _, labels = connected_components(graph, directed=False)
    return planted, dict(zip(paths, labels.tolist(), strict=True)), paths


def test_every_planted_copy_group_merges(demo_groups):
    planted, group_of, _ = demo_groups
    groups = [[p["original"], p["copy"]] for p in planted["near_duplicates"]]
    groups += [[p["original"], *p["copies"]] for p in planted["exact_duplicates"]]
    missed = [m[1] for m in groups if len({group_of[path] for path in m}) != 1]
    assert missed == KNOWN_MISSED_COPIES


KNOWN_MISSED_COPIES: list[str] = []
"""Planted copies the matcher does not join to their original: none. (Before demo web build 2,
near-04, -05 and -07 were no copies of the picture shown: the planting dropped the emoji's
alpha channel, showing the colours stored under transparent pixels.)"""


def test_no_two_fashion_mnist_images_merge(demo_groups):
    planted, group_of, paths = demo_groups
    copies = {p["copy"] for p in planted["near_duplicates"]}
    copies |= {c for p in planted["exact_duplicates"] for c in p["copies"]}
    source_of = {r["url"]: (r["split"], r["index"]) for r in planted["fashion"]}
    source_of |= {p.replace(".png", "@2x.png"): i for p, i in source_of.items()}  # srcset
    sources_in: dict[int, set[tuple[str, int]]] = {}
    for path in paths:
        if path in source_of and path not in copies:
            sources_in.setdefault(group_of[path], set()).add(source_of[path])
    merged = sorted(sorted(s) for s in sources_in.values() if len(s) > 1)
    assert merged == sorted(GENUINE_DATASET_DUPLICATES + KNOWN_FALSE_MERGES)


def _class_correlations(
    images: np.ndarray, labels: np.ndarray, label: int
) -> tuple[np.ndarray, np.ndarray]:
    """The train indices of one class and the Pearson correlation of every pair of its images
    (the diagonal set to -2)."""
    members = np.flatnonzero(labels == label)
    z = images[members].reshape(len(members), -1).astype(np.float32)
    z -= z.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    corr = z @ z.T
    np.fill_diagonal(corr, -2.0)
    return members, corr


def test_the_genuine_dataset_duplicates_are_one_picture():
    """Each pair is one picture stored twice: its pixels correlate above 0.997, or above 0.99
    where no other pair of distinct images of its class (6,000, some 18 million pairs) comes
    as close; and the two are not byte-identical."""
    images, labels = fashion_mnist("train")
    for (_, a), (_, b) in GENUINE_DATASET_DUPLICATES:
        x, y = images[a].astype(np.float64), images[b].astype(np.float64)
        assert not np.array_equal(x, y)
        corr = np.corrcoef(x.ravel(), y.ravel())[0, 1]
        assert corr > 0.99
        if corr <= 0.997:
            members, pairs = _class_correlations(images, labels, int(labels[a]))
            i, j = np.searchsorted(members, a), np.searchsorted(members, b)
            assert pairs[i, j] == pairs.max()  # no other pair of the class is as close
            assert np.sort(pairs.max(axis=1))[-3] < 0.99  # nor within 0.99 (next: 0.987)


GENUINE_DATASET_DUPLICATES: list[list[tuple[str, int]]] = [
    [("train", 34772), ("train", 49602)],  # one pair of trousers: mean |difference| 1.8/255
    [("train", 11251), ("train", 11421)],  # one bag, 17/255 brighter: the matcher is
    # brightness-invariant by design (brightness changes are planted copies too)
    [("train", 32734), ("train", 58962)],  # one ankle boot, 9/255 brighter: correlation
    # 0.994 (0.9934 allowing 1 px shifts), the closest pair of all 6,000 ankle boots, where
    # 99.9 % of them have no other boot closer than 0.987
]
"""Different Fashion-MNIST train indices holding the same picture (pixel evidence above)."""
KNOWN_FALSE_MERGES: list[list[tuple[str, int]]] = [
    [("train", 23162), ("train", 28897)],  # two bags of one outline, one darker
]
"""Distinct images the matcher still merges at 28 px (listed so that any new one fails). The
bags share an outline, and the one scaled by 3-5 % correlates 0.978 with the other (0.871
unaligned), which may be one product photographed twice or cropped differently, but the
pixels do not prove it: 40 bags' closest other bags, searched over the same scales and
sub-pixel shifts, correlate 0.93 (median) to 0.986. A crop copy of a 28 px bag is resampled
the same way, so the pixel matcher cannot tell the two apart."""


def test_every_other_merge_is_listed(demo_groups):
    """Merges among the demo web's emoji and clipart (not planted, not Fashion-MNIST, which
    the test above covers) are each listed below with what they are, so a new one fails."""
    planted, group_of, paths = demo_groups
    planted_paths = {p[k] for p in planted["near_duplicates"] for k in ("original", "copy")}
    planted_paths |= {p["original"] for p in planted["exact_duplicates"]}
    planted_paths |= {c for p in planted["exact_duplicates"] for c in p["copies"]}
    members: dict[int, list[str]] = {}
    for path in paths:
        if not path.startswith("/img/fashion/") and path not in planted_paths:
            members.setdefault(group_of[path], []).append(path)
    merged = sorted(sorted(m) for m in members.values() if len(m) > 1)
    assert merged == sorted(SAME_PICTURE_AT_28PX)


def test_drawings_of_one_layout_stay_apart(demo_groups):
    """The emoji pairs that merged before the local-difference veto stay apart."""
    _, group_of, _ = demo_groups
    assert [pair for pair in ONE_LAYOUT_DRAWINGS if group_of[pair[0]] == group_of[pair[1]]] == []


def test_the_listed_merges_are_what_they_are_said_to_be():
    site = ensure_demo_web()

    def largest_difference(group: list[str]) -> int:
        pixels = [np.asarray(_as_downloaded(site / p.lstrip("/")).convert("RGB"), np.int16)
                  for p in group]  # fmt: skip
        return max(int(np.abs(pixels[0] - other).max()) for other in pixels[1:])

    assert all(largest_difference(g) <= 32 for g in SAME_PICTURE_AT_28PX)
    assert all(largest_difference(g) >= 140 for g in ONE_LAYOUT_DRAWINGS)


SAME_PICTURE_AT_28PX: list[list[str]] = [
    # openclipart: plain rings and frames, the same picture at 28 px (the largest difference
    # of any pixel in a group is 0-12/255, and 21 and 29/255 for two rings whose halo
    # differs a little)
    ["/img/clipart/0031.png", "/img/clipart/0153.png", "/img/clipart/0394.png"],
    ["/img/clipart/0046.png", "/img/clipart/0469.png"],
    ["/img/clipart/0062.png", "/img/clipart/0480.png"],
    ["/img/clipart/0063.png", "/img/clipart/0195.png"],
    ["/img/clipart/0086.png", "/img/clipart/0089.png"],
    ["/img/clipart/0091.png", "/img/clipart/0221.png"],
    ["/img/clipart/0106.png", "/img/clipart/0368.png"],
    ["/img/clipart/0169.png", "/img/clipart/0184.png"],
    ["/img/clipart/0305.png", "/img/clipart/0408.png"],
    ["/img/clipart/0312.png", "/img/clipart/0385.png"],
    ["/img/clipart/0338.png", "/img/clipart/0373.png"],
    ["/img/clipart/0429.png", "/img/clipart/0432.png"],
    # Google emoji: flags of two regions drawn pixel-identically (difference 0)
    ["/img/emoji/0024.png", "/img/emoji/0181.png"],
    ["/img/emoji/0094.png", "/img/emoji/0702.png"],
    ["/img/emoji/0190.png", "/img/emoji/0483.png"],
    ["/img/emoji/0528.png", "/img/emoji/0665.png"],
    ["/img/emoji/0651.png", "/img/emoji/0677.png"],
]
"""Different files of the demo web that show one picture once downloaded at 28 px."""
ONE_LAYOUT_DRAWINGS: list[list[str]] = [
    ["/img/emoji/0155.png", "/img/emoji/0847.png"],  # outbox 1F4E4 and inbox 1F4E5 trays
    ["/img/emoji/0312.png", "/img/emoji/0444.png"],  # mage 1F9D9 and woman mage
    ["/img/emoji/0456.png", "/img/emoji/0693.png"],  # flags of Nicaragua and Honduras
    ["/img/emoji/0667.png", "/img/emoji/0736.png"],  # angry imp 1F47F, smiling devil 1F608
]
"""Distinct emoji of one layout, differing in one place (an arrow, the hair, the emblem, the
mouth) by 148-203/255. They correlate 0.991-0.999 on the 16x16 verification grid, as high as
re-encoded copies, and merged until the local-difference veto (near_dup_local_max_share):
what differs gathers in one block (0.53-0.63 of it, against spread JPEG noise) whose centre
lies 0.16-0.48 of the side from every edge, where a copy's added watermark does not."""
