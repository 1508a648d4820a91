"""Benchmark: the near-duplicate candidate search split into database shards
(tasks/curate/knn_shards.py) vs the single flat pass, on candidate vectors with look-alike
crowds and 1 % planted near copies.

    .venv/bin/python bench/bench_knn_shards.py                  # 60k views, 4 shards
    .venv/bin/python bench/bench_knn_shards.py --views 200000 --shards 8

The single pass is one task (``near_dup.vector_pairs`` over every view); the sharded search
one ``search_shard`` task per shard, then the merge in this process. Tasks run in fresh
processes, two at a time, so each task's peak resident memory growth is its own. Reported
side by side: wall time, task seconds summed (the work, as a cluster would pay it), the
largest task's peak memory, and the ratios; the pair sets must be equal. Writes
bench/results/knn_shards.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import CurateConfig
from tasks.curate.dedup import match_config
from tasks.curate.flat_knn import KNN_QUERY_BLOCK
from tasks.curate.knn_shards import (
    ShardSearchJob,
    ShardSearchResult,
    merged_neighbours,
    search_shard,
    shard_bounds,
)
from tasks.curate.mapped_io import PeakMemory, load_array, save_array
from tasks.curate.near_dup import (
    VIEWS,
    neighbour_pair_keys,
    neighbours_per_view,
    pair_rows_cols,
    vector_pairs,
)

RESULTS = Path(__file__).resolve().parent / "results" / "knn_shards.json"
DIM = 192
CFG = replace(match_config(CurateConfig()), flat_max_rows=1 << 40)
"""The stage's thresholds, the single pass flat at any size as the shards are (past
near_dup_flat_max_rows the stage's single pass is IVF, approximate: the stage shards only
below it)."""


def crowded_vectors(views: int, rng: np.random.Generator) -> np.ndarray:
    """(views, DIM) unit rows in crowds around views // 200 centres (look-alikes correlate
    about 0.7, so many rows have more than k neighbours above the candidate floor), the last
    1 % near copies of others."""
    centres = rng.standard_normal((max(1, views // 200), DIM)).astype(np.float32)
    vectors = centres[rng.integers(len(centres), size=views)]
    vectors += 0.65 * rng.standard_normal(vectors.shape, dtype=np.float32)
    copies = views // 100
    vectors[views - copies :] = vectors[rng.choice(views - copies, copies, replace=False)]
    vectors[views - copies :] += 0.05 * rng.standard_normal((copies, DIM), dtype=np.float32)
    vectors -= vectors.mean(axis=1, keepdims=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def single_pass(database: str) -> tuple[np.ndarray, int, float]:
    """The single pass as one task: its (p, 2) pairs, peak memory growth, seconds."""
    start = time.perf_counter()
    with PeakMemory() as memory:
        rows, cols = vector_pairs(load_array(database), CFG)
    return np.stack([rows, cols], axis=1), memory.grown, time.perf_counter() - start


def _timed(job: ShardSearchJob) -> tuple[ShardSearchResult, float]:
    start = time.perf_counter()
    return search_shard(job), time.perf_counter() - start


def sharded(database: str, views: int, shards: int, workdir: str, processes: int) -> tuple[
    dict[str, Any], np.ndarray
]:  # fmt: skip
    """Shard tasks in fresh processes, then the merge here: timings, memory and pairs."""
    k = neighbours_per_view(CFG, views, self_search=True)
    jobs = [ShardSearchJob(database, database, start, stop, k, CFG.candidate_min_similarity,
                           KNN_QUERY_BLOCK, os.path.join(workdir, f"shard-{s:04d}.npy"))
            for s, (start, stop) in enumerate(shard_bounds(views, shards))]  # fmt: skip
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes, maxtasksperchild=1) as pool:
        searched = pool.map(_timed, jobs, chunksize=1)
    tasks = time.perf_counter() - start
    results = [r for r, _ in searched]
    merge_start = time.perf_counter()
    n_db = views // VIEWS
    keys = [neighbour_pair_keys(rows, ids, sims, CFG, n_db, True)
            for rows, ids, sims in merged_neighbours(results, views, k, KNN_QUERY_BLOCK)]  # fmt: skip
    rows, cols = pair_rows_cols(np.concatenate(keys), n_db)
    merge = time.perf_counter() - merge_start
    return {
        "shards": len(jobs),
        "tasks_wall_s": tasks,
        "merge_s": merge,
        "wall_s": tasks + merge,
        "task_s_sum": sum(s for _, s in searched),
        "largest_task_views": max(r.views for r in results),
        "peak_task_mib": max(r.peak_bytes for r in results) / 2**20,
        "pairs": len(rows),
        "largest_result": asdict(max(results, key=lambda r: r.peak_bytes)),
    }, np.stack([rows, cols], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=60_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    vectors = crowded_vectors(args.views, np.random.default_rng(0))
    with tempfile.TemporaryDirectory(prefix="bench-knn-shards-") as tmp:
        database = os.path.join(tmp, "database.npy")
        save_array(database, vectors)
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            single_pairs, single_peak, single_s = pool.apply(single_pass, (database,))
        split, split_pairs = sharded(database, args.views, args.shards, tmp, args.processes)
    if not np.array_equal(single_pairs, split_pairs):
        raise SystemExit(f"pair sets differ: {len(single_pairs)} vs {len(split_pairs)}")
    single = {"wall_s": single_s, "task_s_sum": single_s, "peak_task_mib": single_peak / 2**20,
              "largest_task_views": args.views, "pairs": len(single_pairs)}  # fmt: skip
    print(f"{args.views:,} views, k {neighbours_per_view(CFG, args.views, True)}, "
          f"{len(single_pairs):,} candidate pairs (equal on both sides)")  # fmt: skip
    heading = f"{split['shards']} shards"
    print(f"{'':<26}{'single pass':>14}{heading:>14}{'ratio':>9}")
    for key, label in (("wall_s", "wall s"), ("task_s_sum", "task s, summed"),
                       ("peak_task_mib", "peak MiB, largest task"),
                       ("largest_task_views", "views, largest task")):  # fmt: skip
        a, b = single[key], split[key]
        print(f"{label:<26}{a:>14,.1f}{b:>14,.1f}{b / a:>8.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "views": args.views, "processes": args.processes, "single": single, "sharded": split,
        "cpus": os.cpu_count(), "machine": platform.machine(),
    }, indent=2))  # fmt: skip
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
