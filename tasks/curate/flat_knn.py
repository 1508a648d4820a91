"""The exact flat nearest-neighbour search of the near-duplicate candidates: inner products
as matrix products over fixed blocks, each query's k best kept by (similarity desc, id asc),
so that the single pass (tasks/curate/near_dup.py) and its database shards
(tasks/curate/knn_shards.py) keep the same neighbours, ties included."""

from __future__ import annotations

import numpy as np

KNN_QUERY_BLOCK = 2048
"""Query views per matrix product of the flat search (a product is 4 MiB of float32)."""
KNN_DATABASE_BLOCK = 512
"""Database views per matrix product of the flat search, counted from the first: BLAS may
round a product by its shape, so the shards of tasks/curate/knn_shards.py start at
multiples of it and compute every similarity as the single pass does, bit for bit."""


def flat_neighbours(
    database: np.ndarray, probe: np.ndarray, k: int, min_similarity: float, first_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each probe row's k nearest database rows by inner product, those at or above
    ``min_similarity`` of them, exactly: triplets (probe row, database id, similarity) sorted
    by (row, similarity desc, id asc), so among rows tied at the k-th place the lowest ids
    stay. Ids count from ``first_id`` (a multiple of KNN_DATABASE_BLOCK).

    Each row keeps a floor: its k-th largest similarity so far, or min_similarity. An entry
    below the floor can never be among the row's final k, so a block's product is only
    scanned where a row's largest entry reaches its floor; past the first blocks that is
    few rows, and the product's other entries are never visited again."""
    found = []
    for q0 in range(0, len(probe), KNN_QUERY_BLOCK):
        queries = probe[q0 : q0 + KNN_QUERY_BLOCK]
        best = np.full((len(queries), k), -np.inf, np.float32)  # the k largest kept, any order
        floor = np.full(len(queries), min_similarity, np.float32)
        parts = []
        for d0 in range(0, len(database), KNN_DATABASE_BLOCK):
            sims = queries @ database[d0 : d0 + KNN_DATABASE_BLOCK].T
            hot = np.flatnonzero(sims.max(axis=1) >= floor)
            if not len(hot):
                continue
            rows, cols = np.nonzero(sims[hot] >= floor[hot, None])  # row-major: rows sorted
            rows, values = hot[rows], sims[hot[rows], cols]
            best[hot] = _k_largest(best[hot], rows, values, hot, k)
            floor[hot] = np.maximum(best[hot].min(axis=1), min_similarity)
            parts.append((rows, cols + first_id + d0, values))
        if not parts:
            continue
        rows, ids, sims = (np.concatenate(p) for p in zip(*parts, strict=True))
        rows, ids, sims = nearest_first(rows, ids, sims, k)
        found.append((rows + q0, ids, sims))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    rows, ids, sims = (np.concatenate(p) for p in zip(*found, strict=True))
    return rows, ids, sims


def _k_largest(
    best: np.ndarray, rows: np.ndarray, values: np.ndarray, hot: np.ndarray, k: int
) -> np.ndarray:
    """(h, k) values of rows ``hot`` and new entries (rows, sorted as ``hot``; values) ->
    each hot row's k largest of both, in no order."""
    slot = np.searchsorted(hot, rows)
    position = np.arange(len(rows)) - np.searchsorted(rows, rows)
    width = int(position.max()) + 1
    merged = np.full((len(hot), k + width), -np.inf, np.float32)
    merged[:, :k] = best
    merged[slot, k + position] = values
    return np.partition(merged, width, axis=1)[:, width:]


def nearest_first(
    rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour triplets -> each row's first k by (similarity desc, id asc), sorted by
    (row, similarity desc, id asc)."""
    order = np.lexsort((ids, -sims, rows))
    rows, ids, sims = rows[order], ids[order], sims[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < k
    return rows[keep].astype(np.int64), ids[keep].astype(np.int64), sims[keep]
