"""The near-duplicate candidate search split into database shards finds exactly the single
pass's pairs, with less memory per task (tasks/curate/knn_shards.py)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from demo.dedup_quality import (
    TRANSFORM_FUNCTIONS,
    TRANSFORMS,
    emoji_sources,
    fashion_sources,
    render,
)
from tasks.core.config import CurateConfig
from tasks.core.stage import RunContext, map_in_process
from tasks.core.storage import Storage
from tasks.curate import flat_knn, knn_shards
from tasks.curate.dedup import match_config
from tasks.curate.flat_knn import KNN_DATABASE_BLOCK
from tasks.curate.knn_shards import (
    _TRIPLET,
    ShardSearchJob,
    ShardSearchResult,
    merged_neighbours,
    search_shard,
    shard_bounds,
    sharded_candidate_pairs,
    sharded_vector_pairs,
)
from tasks.curate.mapped_io import PeakMemory, load_array, save_array
from tasks.curate.near_dup import (
    VIEWS,
    candidate_pairs,
    candidate_vectors,
    image_thumbnail,
    pair_similarity,
    thumbnails_array,
    vector_pairs,
    verified,
)
from tasks.curate.stage import curate
from tests.curate.conftest import DownloadedWeb

CFG = match_config(CurateConfig())
TIED = 12
"""Exact pixel copies of one image: more than candidate_k, so its views' k-th neighbours tie."""


@pytest.fixture(scope="module")
def thumbs() -> np.ndarray:
    """About 1,830 real images (Fashion-MNIST and emoji at 64 px, each with one copy per
    transform of the quality harness) and TIED copies of one: over seven FAISS blocks of
    views."""
    rng = np.random.default_rng(0)
    sources = fashion_sources(20, rng) + emoji_sources(60, rng)
    images = [render(s, 64) for s in sources]
    for transform in TRANSFORMS:
        images += [TRANSFORM_FUNCTIONS[transform](render(s, 64), rng) for s in sources]
    images += [images[7]] * TIED
    return thumbnails_array([image_thumbnail(image) for image in images])


def _pairs(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.stack([rows, cols], axis=1)


@pytest.mark.parametrize("shards", [4, 7])
def test_sharded_search_finds_the_single_pass_pairs(thumbs: np.ndarray, shards: int, tmp_path):
    """Candidate pairs and verified pairs equal, pair for pair (and no files left behind)."""
    single = candidate_pairs(thumbs, CFG)
    assert len(thumbs) * VIEWS > 6 * KNN_DATABASE_BLOCK  # seven shards, a block or more each
    sharded = sharded_candidate_pairs(thumbs, CFG, shards, str(tmp_path / "w"))
    assert np.array_equal(_pairs(*sharded), _pairs(*single))
    assert not (tmp_path / "w").exists()


def test_verified_pairs_follow(thumbs: np.ndarray, tmp_path):
    """Verification sees the same pairs, so it keeps the same ones: checked once, on four
    shards, for a tenth of the images (verifying all 1,800 takes a minute)."""
    some = thumbs[: len(thumbs) // 10]
    rows, cols = candidate_pairs(some, CFG)
    sharded = sharded_candidate_pairs(some, CFG, 4, str(tmp_path))
    sims = pair_similarity(some, some, rows, cols)
    sharded_sims = pair_similarity(some, some, *sharded)
    assert np.array_equal(sharded_sims, sims)
    assert np.array_equal(verified(*sharded, sharded_sims, CFG), verified(rows, cols, sims, CFG))


def test_sharded_cross_search_finds_the_single_pass_pairs(thumbs: np.ndarray, tmp_path):
    """With queries (decontamination's shape): a database of 1,200 images, the rest queries."""
    db, queries = thumbs[:1200], thumbs[1200:]
    single = candidate_pairs(db, CFG, queries)
    sharded = sharded_candidate_pairs(db, CFG, 3, str(tmp_path), queries=queries)
    assert len(single[0]) > 200 and np.array_equal(_pairs(*sharded), _pairs(*single))


def test_shards_start_on_the_search_blocks_and_ties_still_match():
    """Shard bounds sit on KNN_DATABASE_BLOCK; on 1,200 random views, a third of them exact
    copies (ties everywhere) and every neighbour kept, seven requested shards (three blocks,
    three shards) find the single pass's pairs."""
    assert shard_bounds(10_000, 4, 1024) == [(0, 2048), (2048, 5120), (5120, 8192),
                                             (8192, 10_000)]  # fmt: skip
    assert shard_bounds(500, 3, 1024) == [(0, 500)]
    assert len(shard_bounds(1200, 7)) == 3
    rng = np.random.default_rng(3)
    vectors = candidate_vectors(rng.integers(0, 255, (600, VIEWS, 32, 32, 3)).astype(np.float32))
    vectors[800:] = vectors[:400]  # copies: exact ties
    loose = replace(CFG, candidate_min_similarity=-1.0)
    single = _pairs(*vector_pairs(vectors, loose))
    assert np.array_equal(_pairs(*sharded_vector_pairs(vectors, loose, 7, "memory://knn")), single)


def test_merge_orders_by_similarity_then_lowest_id(tmp_path: Path):
    """Two shards' lists for one query view: the merge keeps the lowest ids among ties."""
    results = []
    for name, found in (("a", [(0, 7, 0.9), (0, 3, 0.5)]), ("b", [(0, 1, 0.5), (0, 9, 0.2)])):
        path = tmp_path / f"{name}.npy"
        with open(path, "wb") as fh:
            np.save(fh, np.array(found, _TRIPLET))
        results.append(ShardSearchResult(str(path), 2, 2, 0))
    [(rows, ids, sims)] = merged_neighbours(results, 1, 3, 4096)
    assert rows.tolist() == [0, 0, 0] and ids.tolist() == [7, 1, 3]
    assert sims.tolist()[1:] == [0.5, 0.5]


def test_shards_run_as_mapped_prefect_tasks(prefect_harness):
    """In a flow, ``map_as_tasks`` runs one Prefect task per shard on the flow's task runner."""
    from prefect import flow

    from flows.common import map_as_tasks
    from tasks.core.config import ExecutionConfig
    from tests.fixtures_prefect import run_records

    rng = np.random.default_rng(5)
    vectors = candidate_vectors(rng.integers(0, 255, (600, VIEWS, 32, 32, 3)).astype(np.float32))
    vectors[800:] = vectors[:400]

    @flow
    def sharded_search() -> np.ndarray:
        mapped = partial(map_as_tasks, "curate", ExecutionConfig())
        return _pairs(*sharded_vector_pairs(vectors, CFG, 3, "memory://knn-flow", mapped))

    state = sharded_search(return_state=True)
    assert np.array_equal(state.result(), _pairs(*vector_pairs(vectors, CFG)))
    _, task_runs = run_records(state.state_details.flow_run_id)
    searched = [t for t in task_runs if t.name.startswith("curate-search_shard")]
    assert len(searched) == 3 and all(t.state.is_completed() for t in searched)


def _small_query_blocks() -> None:
    """A pool's initializer: the flat search takes 256 query views per block."""
    flat_knn.KNN_QUERY_BLOCK = 256


def single_pass_task(database: str) -> tuple[int, int]:
    """The single pass as one task over a vectors file: (pairs found, peak memory growth)."""
    with PeakMemory() as memory:
        rows, _ = vector_pairs(load_array(database), CFG)
    return len(rows), memory.grown


def test_a_shard_task_needs_less_memory_than_the_single_pass(thumbs: np.ndarray, tmp_path):
    """42k views (the real ones and five jittered copies): the largest of four shard tasks,
    in a fresh process, grows its resident memory less than half as much as the single pass
    does in another."""
    base = candidate_vectors(thumbs)
    rng = np.random.default_rng(4)
    jittered = [base] + [base + 0.05 * rng.standard_normal(base.shape, np.float32)
                         for _ in range(5)]  # fmt: skip
    vectors = np.concatenate(jittered)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    database = str(tmp_path / "database.npy")
    save_array(database, vectors)
    k = CFG.candidate_k * VIEWS + VIEWS
    start, stop = max(shard_bounds(len(vectors), 4), key=lambda b: b[1] - b[0])
    job = ShardSearchJob(database, database, start, stop, k, CFG.candidate_min_similarity,
                         1024, str(tmp_path / "shard.npy"))  # fmt: skip
    context = multiprocessing.get_context("spawn")
    # A fresh process per task, both searching 256 queries at a time: the working buffers of
    # a query block (~17 MiB at the default 2,048, the same for either task) do not grow
    # with the data, and at this size would hide what does.
    with context.Pool(2, initializer=_small_query_blocks, maxtasksperchild=1) as pool:
        single = pool.apply_async(single_pass_task, (database,))
        shard = pool.apply_async(search_shard, (job,))
        (_, single_peak), shard_run = single.get(), shard.get()
    assert 0 < shard_run.peak_bytes < single_peak / 2, (shard_run, single_peak)


def test_curate_stage_writes_the_same_samples_with_three_shards(
    downloaded_web: DownloadedWeb, tmp_path: Path
):
    """The whole stage body, near_dup_shards 1 and 3: the same keep and reasons per row."""
    mapped: list[tuple[str, int]] = []

    def recording_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        mapped.append((fn.__name__, len(items)))
        return map_in_process(fn, items)

    written = []
    for shards in (1, 3):
        root = downloaded_web.root_with_download(tmp_path / f"shards-{shards}")
        cfg = downloaded_web.config(root, near_dup_shards=shards, decontaminate=False)
        with pytest.MonkeyPatch.context() as patch:  # the fixture's ~100 views: 3 shards
            patch.setattr(flat_knn, "KNN_DATABASE_BLOCK", 16)
            patch.setattr(knn_shards, "KNN_DATABASE_BLOCK", 16)
            curate(cfg, Storage(cfg.storage), RunContext(map_tasks=recording_map))
        samples = pd.read_parquet(root / "curate" / "samples.parquet")
        written.append(samples[["key", "keep", "reasons", "duplicate_of"]])
        assert not (root / "curate" / "_near_dup_shards").exists()
    one, three = written
    assert one["reasons"].map(list).tolist() == three["reasons"].map(list).tolist()
    assert one.drop(columns="reasons").equals(three.drop(columns="reasons"))
    assert ("search_shard", 3) in mapped
    assert (~one["keep"]).sum() > 0 and one["reasons"].map(lambda r: "near_duplicate" in r).any()
