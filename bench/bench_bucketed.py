"""Benchmark: the bucketed Hamming pair search (tasks/curate/buckets.py) vs one global
search, on 64-bit hashes with 1 % planted near copies, at Hamming radius 4.

    .venv/bin/python bench/bench_bucketed.py                  # 1M hashes, 64 buckets
    .venv/bin/python bench/bench_bucketed.py --n 200000 --buckets 16

Both sides run the same task (``search_bucket``: FAISS multi-index hashing over the codes
it is given) in fresh processes, two at a time, so each task's peak resident memory growth
is its own: the single pass is one task over every code, the bucketed search one task per
bucket. Reported side by side: wall time (split + tasks + union), task seconds summed (the
work, as a cluster would pay it), the largest task's peak memory, and the ratios; the pair
sets must be equal. Writes bench/results/bucketed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tasks.curate.buckets import (
    BucketJob,
    BucketResult,
    search_bucket,
    union_pairs,
    write_bucket_jobs,
)
from tasks.curate.dedup import BinaryIndexSpec

RESULTS = Path(__file__).resolve().parent / "results" / "bucketed.json"
RADIUS = 4
SPEC = BinaryIndexSpec("multihash")


def planted_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 8) uint8 random codes, the last 1 % copies of others with <= RADIUS bits flipped."""
    codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    copies = n // 100
    codes[n - copies :] = codes[rng.choice(n - copies, size=copies, replace=False)]
    for row in range(n - copies, n):
        for bit in rng.choice(64, size=rng.integers(0, RADIUS + 1), replace=False):
            codes[row, bit // 8] ^= np.uint8(1 << (bit % 8))
    return codes


def _timed(job: BucketJob) -> tuple[BucketResult, float]:
    start = time.perf_counter()
    result = search_bucket(job)
    return result, time.perf_counter() - start


def run_side(
    codes: np.ndarray, buckets: int, workdir: str, processes: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Split, search every bucket in fresh processes, union: timings and memory, and the
    (p, 2) pairs found."""
    start = time.perf_counter()
    jobs = write_bucket_jobs(codes, RADIUS, buckets, SPEC, workdir)
    split = time.perf_counter() - start
    with multiprocessing.get_context("spawn").Pool(processes, maxtasksperchild=1) as pool:
        searched = pool.map(_timed, jobs, chunksize=1)
    tasks = time.perf_counter() - start - split
    union_start = time.perf_counter()
    rows, cols = union_pairs([r for r, _ in searched])
    union = time.perf_counter() - union_start
    results = [r for r, _ in searched]
    return {
        "buckets": buckets,
        "tasks": len(jobs),
        "split_s": split,
        "tasks_wall_s": tasks,
        "union_s": union,
        "wall_s": split + tasks + union,
        "task_s_sum": sum(s for _, s in searched),
        "largest_task_codes": max(r.codes for r in results),
        "codes_searched": sum(r.codes for r in results),
        "peak_task_mib": max(r.peak_bytes for r in results) / 2**20,
        "pairs": len(rows),
        "largest_result": asdict(max(results, key=lambda r: r.peak_bytes)),
    }, np.stack([rows, cols], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    codes = planted_hashes(args.n, np.random.default_rng(0))
    with tempfile.TemporaryDirectory(prefix="bench-bucketed-") as tmp:
        single, single_pairs = run_side(codes, 1, os.path.join(tmp, "single"), args.processes)
        bucketed, bucketed_pairs = run_side(
            codes, args.buckets, os.path.join(tmp, "bucketed"), args.processes
        )
    if not np.array_equal(single_pairs, bucketed_pairs):
        raise SystemExit(f"pair sets differ: {single['pairs']} vs {bucketed['pairs']}")
    print(f"{args.n:,} hashes, radius {RADIUS}, {single['pairs']:,} pairs (equal on both sides)")
    print(f"{'':<26}{'single pass':>14}{f'{args.buckets} buckets':>14}{'ratio':>9}")
    for key, label in (("wall_s", "wall s"), ("task_s_sum", "task s, summed"),
                       ("peak_task_mib", "peak MiB, largest task"),
                       ("largest_task_codes", "codes, largest task"),
                       ("codes_searched", "codes searched, all")):  # fmt: skip
        a, b = single[key], bucketed[key]
        print(f"{label:<26}{a:>14,.1f}{b:>14,.1f}{b / a:>8.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "n": args.n, "radius": RADIUS, "processes": args.processes, "single": single,
        "bucketed": bucketed, "cpus": os.cpu_count(), "machine": platform.machine(),
    }, indent=2))  # fmt: skip
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
