"""The near-duplicate harness (bench/bench_dedup_quality.py) on a small fixed sample: fails
when precision or recall of the curate stage's matcher drops below the issue's targets."""

from __future__ import annotations

import numpy as np
import pytest

from demo.dedup_quality import (
    SIZES,
    TARGET_PRECISION,
    TARGET_RECALL,
    TRANSFORMS,
    clipart_sources,
    emoji_sources,
    fashion_sources,
    score_pool,
)
from tasks.core.config import CurateConfig
from tasks.curate.dedup import match_config

SHORT_OF_TARGET: dict[tuple[int, str], float] = {}
"""Where the matcher does not reach the issue's recall target yet, a floor that keeps it from
getting worse (the full harness's numbers are in the README). None on this sample; the full
harness finds 28 px jpeg (0.943) and brightness (0.948) just short, which this sample meets.
(28 px resize measured 0.825 here before pairs were compared at the shrunk copy's
resolution, ``tasks.curate.near_dup.pair_similarity``.)"""


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(1)
    return fashion_sources(6, rng) + emoji_sources(30, rng) + clipart_sources(30, rng)


@pytest.mark.parametrize("size", SIZES)
def test_matcher_meets_targets_on_every_transform(sources, size):
    cfg = match_config(CurateConfig())
    below = []
    for transform in TRANSFORMS:
        score, _ = score_pool(sources, size, transform, cfg, seed=1)
        recall_floor = SHORT_OF_TARGET.get((size, transform), TARGET_RECALL[transform])
        if score.precision < TARGET_PRECISION or score.recall < recall_floor:
            below.append((transform, round(score.precision, 3), round(score.recall, 3)))
    assert below == []
