"""The exact flat neighbour search (tasks/curate/flat_knn.py) against a brute-force top-k
over the whole similarity matrix, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.curate import flat_knn
from tasks.curate.flat_knn import flat_neighbours


def brute_force(database: np.ndarray, probe: np.ndarray, k: int, floor: float):
    """Per probe row: the first k database rows by (similarity desc, id asc), of those at
    or above ``floor``; the similarities from the same block products as the search (query
    block by database block: BLAS may round a product by its shape, on both axes)."""
    q_block, d_block = flat_knn.KNN_QUERY_BLOCK, flat_knn.KNN_DATABASE_BLOCK
    sims = np.concatenate(
        [np.concatenate([probe[q : q + q_block] @ database[d : d + d_block].T
                         for d in range(0, len(database), d_block)], axis=1)
         for q in range(0, len(probe), q_block)], axis=0,
    )  # fmt: skip
    rows, ids, values = [], [], []
    for r, row in enumerate(sims):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        order = order[row[order] >= floor]
        rows += [r] * len(order)
        ids += order.tolist()
        values += row[order].tolist()
    return np.array(rows), np.array(ids), np.array(values, np.float32)


@pytest.mark.parametrize("floor", [-1.0, 0.3, 0.9])
def test_flat_search_keeps_each_rows_k_nearest_with_ties_by_lowest_id(
    floor: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flat_knn, "KNN_QUERY_BLOCK", 64)
    monkeypatch.setattr(flat_knn, "KNN_DATABASE_BLOCK", 32)
    rng = np.random.default_rng(0)
    # Few distinct directions, so many similarities tie exactly, across database blocks.
    database = rng.normal(size=(300, 8)).astype(np.float32)
    database[150:] = database[rng.integers(0, 150, 150)]
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    probe = np.concatenate([database[rng.integers(0, 300, 100)],
                            rng.normal(size=(100, 8)).astype(np.float32)])  # fmt: skip
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    for k in (1, 5, 40):
        rows, ids, sims = flat_neighbours(database, probe, k, floor)
        want_rows, want_ids, want_sims = brute_force(database, probe, k, floor)
        assert np.array_equal(rows, want_rows) and np.array_equal(ids, want_ids)
        assert np.array_equal(sims, want_sims)


def test_ids_count_from_first_id() -> None:
    database = np.eye(4, dtype=np.float32)
    rows, ids, sims = flat_neighbours(database, database[[2]], 1, 0.5, first_id=512)
    assert rows.tolist() == [0] and ids.tolist() == [514] and sims.tolist() == [1.0]
