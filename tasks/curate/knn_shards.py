"""Near-duplicate candidate search split into database shards, one task per shard
(docs/SCALING.md).

The database's candidate vectors (``near_dup.candidate_vectors``, one row per view) are cut
into contiguous shards. A shard's task builds a flat inner-product index over its rows only
and searches every query view against it, a chunk of queries at a time, keeping each query
view's k nearest (similarity, global view id) within the shard. The merge then keeps, per
query view, the k best of the shards' lists, ordered by (similarity desc, id asc); the
k nearest of a union are the k nearest of the parts' k nearest, so with equal similarities
this is the single pass's neighbour list, and the same filter turns it into image pairs.

What is exact: the similarities. FAISS computes them with BLAS in blocks of
``distance_compute_blas_database_bs`` database rows and ``..._query_bs`` queries, and a dot
product's rounding depends on the block shape it falls in; shard bounds and query chunks
therefore sit on that grid, which makes every similarity bit-for-bit the single pass's
(measured here: unaligned chunks differ by up to 8e-7). What is not: FAISS's own pick among
exact ties at the k-th place follows its heap, not the ids, where the merge takes the lowest
ids; both are k nearest, but a view with more than k equally close views may name others.
The pair sets match otherwise (tests/curate/test_knn_shards.py).

Sharding always searches flat: a task's memory is its shard, one chunk of queries and their
results, and the work is that of the flat single pass split B ways. Beyond
``flat_max_rows`` the single pass switches to IVF, which is approximate and would change with
the rows each index holds, so there the sharded search is exact and finds what the single
pass's IVF may miss.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import fsspec
import numpy as np

from tasks.core.stage import MapTasks, map_in_process
from tasks.curate.faiss_device import FaissDevice, on_device
from tasks.curate.mapped_io import PeakMemory, array_rows, read_rows, row_writer, save_array
from tasks.curate.near_dup import (
    VIEWS,
    MatchConfig,
    candidate_vectors,
    neighbour_pair_keys,
    neighbours_per_view,
    pair_rows_cols,
    vector_pairs,
)


def database_block() -> int:
    """Database rows per FAISS BLAS block: shard bounds are multiples of it."""
    return int(faiss.cvar.distance_compute_blas_database_bs)


def query_block() -> int:
    """Queries per FAISS BLAS block: query chunks start at multiples of it."""
    return int(faiss.cvar.distance_compute_blas_query_bs)


def shard_bounds(rows: int, shards: int, align: int) -> list[tuple[int, int]]:
    """At most ``shards`` contiguous non-empty [start, stop) ranges covering 0..rows, the
    inner bounds multiples of ``align`` and the shards as even as that allows."""
    blocks = -(-rows // align)
    cuts = sorted({min(rows, align * round(blocks * s / shards)) for s in range(shards + 1)})
    cuts = [0, *[c for c in cuts if 0 < c < rows], rows]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def query_chunks(rows: int, chunk: int, dim: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of ``chunk`` queries (a multiple of the query block) of ``dim``
    floats. FAISS searches a call's queries with BLAS only when queries * dim reaches
    ``distance_compute_blas_threshold`` (else with its own kernels, rounded otherwise), so a
    last chunk below that joins the one before it, as in one call over every query."""
    blas_rows = -(-int(faiss.cvar.distance_compute_blas_threshold) // dim)
    starts = list(range(0, rows, chunk))
    if len(starts) > 1 and rows - starts[-1] < blas_rows:
        starts.pop()
    return list(zip(starts, [*starts[1:], rows], strict=True))


@dataclass(frozen=True)
class ShardSearchJob:
    """One shard's search: database view rows [start, stop) of ``database`` ((n, D) float32
    ``.npy``), every row of ``queries`` (the same file for a self-search), the k nearest of
    each kept in ``sims`` ((m, k') float32) and ``ids`` ((m, k') int64, global view ids)."""

    database: str
    queries: str
    start: int
    stop: int
    k: int
    chunk: int
    sims: str
    ids: str
    faiss_device: FaissDevice = "cpu"


@dataclass(frozen=True)
class ShardSearchResult:
    """A searched shard: its neighbour files, how many database views it held, and the
    task's peak resident memory growth (bytes; exact in a fresh process)."""

    sims: str
    ids: str
    views: int
    peak_bytes: int


def search_shard(job: ShardSearchJob) -> ShardSearchResult:
    """The mapped task: each query view's k nearest views within one database shard."""
    with PeakMemory() as memory:
        shard = read_rows(job.database, job.start, job.stop)
        index = on_device(faiss.IndexFlatIP(shard.shape[1]), job.faiss_device)
        index.add(shard)
        del shard  # the index holds its own copy
        k = min(job.k, job.stop - job.start)
        n_q = array_rows(job.queries)
        with row_writer(job.sims, (n_q, k), np.float32) as write_sims, \
                row_writer(job.ids, (n_q, k), np.int64) as write_ids:  # fmt: skip
            for first, last in query_chunks(n_q, job.chunk, index.d):
                sims, found = index.search(read_rows(job.queries, first, last), k)
                write_sims(sims)
                write_ids(np.where(found >= 0, found + job.start, -1))
    return ShardSearchResult(job.sims, job.ids, job.stop - job.start, memory.grown)


def merged_neighbours(
    results: list[ShardSearchResult], n_q: int, k: int, chunk: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per chunk of query views: (first view, sims (m, k), ids (m, k)), each view's k best
    over the shards' lists by (similarity desc, id asc)."""
    for first in range(0, n_q, chunk):
        last = min(first + chunk, n_q)
        sims = np.concatenate([read_rows(r.sims, first, last) for r in results], axis=1)
        ids = np.concatenate([read_rows(r.ids, first, last) for r in results], axis=1)
        order = np.lexsort((ids, -sims), axis=-1)[:, :k]
        yield first, np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def sharded_vector_pairs(
    db_vectors: np.ndarray,
    cfg: MatchConfig,
    shards: int,
    workdir: str,
    map_tasks: MapTasks = map_in_process,
    probe: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``near_dup.vector_pairs`` with the database views split into ``shards`` searched by
    ``map_tasks`` (Prefect tasks in a flow), then merged; ``shards`` <= 1 is the single
    pass itself. ``workdir`` (any fsspec URI) holds the tasks' files and is removed after."""
    if shards <= 1:
        return vector_pairs(db_vectors, cfg, probe)
    n_db = len(db_vectors) // VIEWS
    fs, path = fsspec.core.url_to_fs(workdir)
    fs.makedirs(path, exist_ok=True)
    try:
        database = posixpath.join(workdir, "database.npy")
        save_array(database, db_vectors)
        queries = database
        if probe is not None:
            queries = posixpath.join(workdir, "queries.npy")
            save_array(queries, probe)
        k = neighbours_per_view(cfg, len(db_vectors), self_search=probe is None)
        chunk = query_block()
        jobs = [
            ShardSearchJob(database, queries, start, stop, k, chunk,
                           posixpath.join(workdir, f"shard-{s:04d}-sims.npy"),
                           posixpath.join(workdir, f"shard-{s:04d}-ids.npy"), cfg.faiss_device)
            for s, (start, stop) in enumerate(shard_bounds(len(db_vectors), shards,
                                                           database_block()))
        ]  # fmt: skip
        results = map_tasks(search_shard, jobs)
        n_q = len(db_vectors) if probe is None else len(probe)
        keys = [
            neighbour_pair_keys(first, sims, ids, cfg, n_db, probe is None)
            for first, sims, ids in merged_neighbours(results, n_q, k, chunk)
        ]
    finally:
        fs.rm(path, recursive=True)
    return pair_rows_cols(np.concatenate(keys), n_db)


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
