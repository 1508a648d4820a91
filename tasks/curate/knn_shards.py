"""Near-duplicate candidate search split into database shards, one task per shard
(docs/SCALING.md).

The database's candidate vectors (``near_dup.candidate_vectors``, one row per view) are cut
into contiguous shards. A shard's task holds its rows only and searches every query view
against them (``flat_knn.flat_neighbours``), a chunk of queries at a time, keeping each
query view's k nearest within the shard, with global ids, in a file. The merge keeps, per
query view, the first k of the shards' lists by (similarity desc, id asc), the order the
single pass selects by; the k first of a union are the k first of the parts' k first. The
same filter then turns the lists into image pairs.

Exact: the similarities are the single pass's bit for bit, since shards start at multiples
of ``KNN_DATABASE_BLOCK`` and query chunks at multiples of ``KNN_QUERY_BLOCK``, so every
matrix product has the single pass's operands and shape (BLAS may round a product by its
shape: FAISS's flat index, searched in unaligned chunks, differed by up to 8e-7 here, and so
did its 1- and 2-thread runs). So are the ties, broken by id in both. The caveat is the BLAS
thread count: tasks in the flow process share it; a Dask worker set up otherwise might round
the last bit differently, changing only pairs that bit decides.

Sharding always searches flat: a task's memory is its shard, one chunk of queries and their
neighbours, and the work is the flat single pass's split B ways. Beyond ``flat_max_rows``
the single pass is FAISS IVF, approximate and dependent on the rows each index holds, so
the stage shards only where the single pass is flat (``dedup._near_candidates``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import fsspec
import numpy as np

from tasks.core.stage import MapTasks, map_in_process
from tasks.curate.flat_knn import (
    KNN_DATABASE_BLOCK,
    KNN_QUERY_BLOCK,
    flat_neighbours,
    nearest_first,
)
from tasks.curate.mapped_io import PeakMemory, array_rows, read_rows, save_array
from tasks.curate.near_dup import (
    VIEWS,
    MatchConfig,
    candidate_vectors,
    neighbour_pair_keys,
    neighbours_per_view,
    pair_rows_cols,
    vector_pairs,
)

_TRIPLET = np.dtype([("row", "<i8"), ("id", "<i8"), ("sim", "<f4")])


def shard_bounds(rows: int, shards: int, align: int | None = None) -> list[tuple[int, int]]:
    """At most ``shards`` contiguous non-empty [start, stop) ranges covering 0..rows, starting
    at multiples of ``align`` (KNN_DATABASE_BLOCK) and as even as that allows."""
    align = align or KNN_DATABASE_BLOCK
    blocks = -(-rows // align)
    cuts = {min(rows, align * round(blocks * s / shards)) for s in range(1, shards)}
    bounds = [0, *sorted(c for c in cuts if 0 < c < rows), rows]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@dataclass(frozen=True)
class ShardSearchJob:
    """One shard's search: database view rows [start, stop) of ``database`` ((n, D) float32
    ``.npy``) against every row of ``queries`` (the same file for a self-search), k nearest
    at or above ``min_similarity``, written to ``neighbours`` (one ``.npy`` triplet array per
    chunk of ``chunk`` queries, in order)."""

    database: str
    queries: str
    start: int
    stop: int
    k: int
    min_similarity: float
    chunk: int
    neighbours: str


@dataclass(frozen=True)
class ShardSearchResult:
    """A searched shard: its neighbours' file, how many database views it held, how many
    neighbours it kept, and the task's peak resident memory growth (bytes; exact in a fresh
    process, 0 where /proc is missing)."""

    neighbours: str
    views: int
    found: int
    peak_bytes: int


def search_shard(job: ShardSearchJob) -> ShardSearchResult:
    """The mapped task: each query view's k nearest views within one database shard."""
    found = 0
    with PeakMemory() as memory, fsspec.open(job.neighbours, "wb") as out:
        shard = read_rows(job.database, job.start, job.stop)
        n_q = array_rows(job.queries)
        for first in range(0, n_q, job.chunk):
            queries = read_rows(job.queries, first, first + job.chunk)
            rows, ids, sims = flat_neighbours(shard, queries, job.k, job.min_similarity,
                                              job.start)  # fmt: skip
            triplets = np.empty(len(rows), _TRIPLET)
            triplets["row"], triplets["id"], triplets["sim"] = rows + first, ids, sims
            np.save(out, triplets)
            found += len(rows)
    return ShardSearchResult(job.neighbours, job.stop - job.start, found, memory.grown)


def merged_neighbours(
    results: list[ShardSearchResult], n_q: int, k: int, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per chunk of query views, the neighbour triplets (row, id, similarity) of each view's
    first k over the shards' lists by (similarity desc, id asc)."""
    with ExitStack() as files:
        handles = [files.enter_context(fsspec.open(r.neighbours, "rb")) for r in results]
        for _ in range(0, n_q, chunk):
            part = np.concatenate([np.load(fh) for fh in handles])
            yield nearest_first(part["row"], part["id"], part["sim"], k)


def sharded_vector_pairs(
    db_vectors: np.ndarray,
    cfg: MatchConfig,
    shards: int,
    workdir: str,
    map_tasks: MapTasks = map_in_process,
    probe: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``near_dup.vector_pairs`` searched flat with the database views split into ``shards``
    tasks run by ``map_tasks`` (Prefect tasks in a flow), then merged; ``shards`` <= 1 is the
    single pass itself. ``workdir`` (any fsspec URI) holds the tasks' files; removed after."""
    if shards <= 1:
        return vector_pairs(db_vectors, cfg, probe)
    n_db = len(db_vectors) // VIEWS
    self_search = probe is None
    fs, path = fsspec.core.url_to_fs(workdir)
    fs.makedirs(path, exist_ok=True)
    try:
        database = posixpath.join(workdir, "database.npy")
        save_array(database, db_vectors)
        queries = database
        if probe is not None:
            queries = posixpath.join(workdir, "queries.npy")
            save_array(queries, probe)
        k = neighbours_per_view(cfg, len(db_vectors), self_search)
        jobs = [
            ShardSearchJob(database, queries, start, stop, k, cfg.candidate_min_similarity,
                           KNN_QUERY_BLOCK, posixpath.join(workdir, f"shard-{s:04d}.npy"))
            for s, (start, stop) in enumerate(shard_bounds(len(db_vectors), shards))
        ]  # fmt: skip
        results = map_tasks(search_shard, jobs)
        n_q = len(db_vectors) if probe is None else len(probe)
        keys = [
            neighbour_pair_keys(rows, ids, sims, cfg, n_db, self_search)
            for rows, ids, sims in merged_neighbours(results, n_q, k, KNN_QUERY_BLOCK)
        ]
    finally:
        fs.rm(path, recursive=True)
    return pair_rows_cols(np.concatenate([np.empty(0, np.int64), *keys]), n_db)


def sharded_candidate_pairs(
    db: np.ndarray,
    cfg: MatchConfig,
    shards: int,
    workdir: str,
    map_tasks: MapTasks = map_in_process,
    queries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``near_dup.candidate_pairs`` of (n, VIEWS, T, T, 3) thumbnails, searched in shards."""
    if len(db) == 0 or (queries is not None and len(queries) == 0):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    probe = None if queries is None else candidate_vectors(queries)
    return sharded_vector_pairs(candidate_vectors(db), cfg, shards, workdir, map_tasks, probe)
