"""The near-duplicate matcher on the demo web's own images, as the demo downloads them
(28 px, centre-cropped): every planted copy group ends up in one group (so exactly one member
survives), and no two different Fashion-MNIST images are merged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from flows.demo import ensure_demo_web
from tasks.core.config import CurateConfig
from tasks.curate.dedup import match_config
from tasks.curate.near_dup import image_thumbnail, near_duplicate_pairs, thumbnails_array
from tasks.curate.phash import flatten_alpha

DOWNLOAD_SIDE = 28  # configs/demo.yaml download.image_size, resize_mode center_crop


def _as_downloaded(path: str) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.fit(flatten_alpha(image), (DOWNLOAD_SIDE, DOWNLOAD_SIDE),
                            Image.Resampling.LANCZOS)  # fmt: skip


@pytest.fixture(scope="module")
def demo_groups():
    site = ensure_demo_web()
    planted = json.loads((site / "planted.json").read_text())
    paths = sorted({p["url"] for p in planted["pairs"] if p["url"].startswith("/img/")})
    paths = [p for p in paths if (site / p.lstrip("/")).suffix in (".png", ".jpg")]
    thumbs = thumbnails_array(
        [image_thumbnail(_as_downloaded(site / p.lstrip("/"))) for p in paths]
    )
    rows, cols, _ = near_duplicate_pairs(thumbs, match_config(CurateConfig()))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(paths), len(paths)))
    _, labels = connected_components(graph, directed=False)
    return planted, dict(zip(paths, labels.tolist(), strict=True)), paths


def test_every_planted_copy_group_merges(demo_groups):
    planted, group_of, _ = demo_groups
    groups = [[p["original"], p["copy"]] for p in planted["near_duplicates"]]
    groups += [[p["original"], *p["copies"]] for p in planted["exact_duplicates"]]
    for members in groups:
        assert len({group_of[m] for m in members}) == 1, members


def test_no_two_fashion_mnist_images_merge(demo_groups):
    planted, group_of, paths = demo_groups
    copies = {p["copy"] for p in planted["near_duplicates"]}
    copies |= {c for p in planted["exact_duplicates"] for c in p["copies"]}
    source_of = {r["url"]: (r["split"], r["index"]) for r in planted["fashion"]}
    sources_in: dict[int, set[tuple[str, int]]] = {}
    for path in paths:
        if path in source_of and path not in copies:
            sources_in.setdefault(group_of[path], set()).add(source_of[path])
    merged = [sorted(s) for s in sources_in.values() if len(s) > 1]
    assert merged == GENUINE_DATASET_DUPLICATES


GENUINE_DATASET_DUPLICATES: list[list[tuple[str, int]]] = []
"""Different Fashion-MNIST indices with the same picture (pixel evidence in the test below)."""
