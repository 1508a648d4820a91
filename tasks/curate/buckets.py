"""Hamming-radius pair search split into buckets, one task per bucket (docs/SCALING.md).

Two 64-bit codes within Hamming distance r agree exactly on at least one of r + 1 disjoint
blocks of their bits (pigeonhole: r differing bits cannot touch all r + 1 blocks). Each code
therefore goes to r + 1 buckets, one per block, picked by hashing (block index, block value)
into ``buckets``; every pair within r meets in at least one bucket, and a search of each
bucket on its own (``hamming_pairs``, within r) followed by the union of what the buckets
found gives exactly the pairs one global search finds. A pair that meets in a bucket by a
hash collision is still within r, so the union holds no pair the global search lacks.

A bucket holds about (r + 1) n / buckets codes, so a task's memory is bounded by its bucket,
not by n. Tasks pass references: each bucket's codes and its pairs are ``.npy`` files under
a working folder (any fsspec URI), and a task returns the path of its pairs and its counts.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np

from tasks.core.stage import MapTasks, map_in_process
from tasks.curate.dedup import BITS, BinaryIndexSpec, hamming_pairs
from tasks.curate.mapped_io import PeakMemory, load_array, save_array

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def block_bounds(radius: int) -> list[tuple[int, int]]:
    """The r + 1 disjoint blocks of the 64 bits, as (lowest bit, bit count); sizes differ by
    at most one and together cover every bit."""
    blocks = radius + 1
    if not 0 < blocks <= BITS:
        raise ValueError(f"Hamming radius {radius} needs 1..{BITS} blocks of a {BITS}-bit code")
    sizes = [BITS // blocks + (1 if b < BITS % blocks else 0) for b in range(blocks)]
    starts = np.cumsum([0, *sizes[:-1]])
    return [(int(lo), size) for lo, size in zip(starts, sizes, strict=True)]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads (block, value) keys evenly over the buckets."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def bucket_members(codes: np.ndarray, radius: int, buckets: int) -> list[np.ndarray]:
    """Per bucket, the sorted row indices of the (n, 8) uint8 codes it holds: each code is
    in the bucket of each of its r + 1 (block index, block value) keys (once per bucket)."""
    words = np.ascontiguousarray(codes, dtype=np.uint8).view("<u8").ravel()
    keys = []
    with np.errstate(over="ignore"):  # the hash multiplies modulo 2**64 on purpose
        for block, (lo, size) in enumerate(block_bounds(radius)):
            mask = np.uint64((1 << size) - 1)
            value = (words >> np.uint64(lo)) & mask
            keys.append(_mix(value + np.uint64(block + 1) * _GOLDEN) % np.uint64(buckets))
    n = len(words)
    slots = np.unique(np.stack(keys).astype(np.int64) * n + np.arange(n, dtype=np.int64))
    bucket_of, rows = slots // n, slots % n
    bounds = np.searchsorted(bucket_of, np.arange(buckets + 1))
    return [rows[bounds[b] : bounds[b + 1]] for b in range(buckets)]


@dataclass(frozen=True)
class BucketJob:
    """One bucket's search: its codes ((m, 8) uint8) and their row ids ((m,) int64) as
    ``.npy`` files, the radius and index, and where its pairs go."""

    codes: str
    ids: str
    pairs: str
    radius: int
    spec: BinaryIndexSpec


@dataclass(frozen=True)
class BucketResult:
    """A searched bucket: its pairs' file ((p, 2) int64 row ids, i < j), how many codes it
    searched and pairs it found, and the task's peak resident memory growth (bytes; exact
    in a fresh process, 0 where /proc is missing)."""

    pairs: str
    codes: int
    found: int
    peak_bytes: int


def write_bucket_jobs(
    codes: np.ndarray, radius: int, buckets: int, spec: BinaryIndexSpec, workdir: str
) -> list[BucketJob]:
    """Split the (n, 8) uint8 codes into buckets under ``workdir``; one job per bucket that
    holds two codes or more (a pair needs two)."""
    jobs = []
    for b, members in enumerate(bucket_members(codes, radius, buckets)):
        if len(members) < 2:
            continue
        stem = posixpath.join(workdir, f"bucket-{b:06d}")
        save_array(f"{stem}-codes.npy", codes[members])
        save_array(f"{stem}-ids.npy", members)
        jobs.append(BucketJob(f"{stem}-codes.npy", f"{stem}-ids.npy", f"{stem}-pairs.npy",
                              radius, spec))  # fmt: skip
    return jobs


def search_bucket(job: BucketJob) -> BucketResult:
    """The mapped task: every pair within the radius among one bucket's codes."""
    with PeakMemory() as memory:
        codes, ids = load_array(job.codes), load_array(job.ids)
        rows, cols = hamming_pairs(codes, job.radius, job.spec)
        pairs = np.stack([ids[rows], ids[cols]], axis=1)  # ids ascend, so i < j stays
        save_array(job.pairs, pairs)
    return BucketResult(job.pairs, len(codes), len(pairs), memory.grown)


def union_pairs(results: Sequence[BucketResult]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs (i < j, sorted) that the buckets found."""
    found = [load_array(r.pairs) for r in results if r.found]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[:, 0], pairs[:, 1]


def bucketed_hamming_pairs(
    codes: np.ndarray,
    radius: int,
    spec: BinaryIndexSpec,
    buckets: int,
    workdir: str,
    map_tasks: MapTasks = map_in_process,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of the (n, 8) uint8 codes within ``radius`` bits, as ``hamming_pairs``
    finds them, searched bucket by bucket with ``map_tasks`` (Prefect tasks in a flow):
    the same pairs whenever ``spec`` is exact ('flat', 'multihash'). ``buckets`` <= 1 is one
    global search, in this process."""
    if buckets <= 1:
        return hamming_pairs(codes, radius, spec)
    fs, path = fsspec.core.url_to_fs(workdir)
    fs.makedirs(path, exist_ok=True)
    jobs = write_bucket_jobs(codes, radius, buckets, spec, workdir)
    return union_pairs(map_tasks(search_bucket, jobs))
