"""The bucketed Hamming search finds exactly the pairs of one global search, with less
memory per task (tasks/curate/buckets.py)."""

from __future__ import annotations

import multiprocessing
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tasks.curate.buckets import (
    block_bounds,
    bucket_members,
    bucketed_hamming_pairs,
    search_bucket,
    union_pairs,
    write_bucket_jobs,
)
from tasks.curate.dedup import BITS, BinaryIndexSpec, hamming_pairs

N = 200_000
RADIUS = 4
PER_DISTANCE = 200
SPEC = BinaryIndexSpec("multihash")


def _flip_one_bit_per_block(code: np.ndarray, blocks: list[int], rng: np.random.Generator) -> None:
    """Flip one bit in each of ``blocks`` (of ``block_bounds(RADIUS)``): the pairs hardest to
    find, since they agree on no block but the untouched ones."""
    bounds = block_bounds(RADIUS)
    for block in blocks:
        lo, size = bounds[block]
        bit = lo + int(rng.integers(size))
        code[bit // 8] ^= np.uint8(1 << (bit % 8))


def _planted(
    rng: np.random.Generator,
) -> tuple[np.ndarray, set[tuple[int, int]], set[tuple[int, int]]]:
    """N random codes with PER_DISTANCE planted pairs at each distance 0..RADIUS (inside) and
    at RADIUS + 1 and RADIUS + 2 (just outside), one flipped bit per block (and one more bit
    anywhere at RADIUS + 2)."""
    codes = rng.integers(0, 256, (N, 8), dtype=np.uint8)
    rows = rng.permutation(N)
    inside: set[tuple[int, int]] = set()
    outside: set[tuple[int, int]] = set()
    for d in range(RADIUS + 3):
        for p in range(PER_DISTANCE):
            a, b = (
                int(x) for x in rows[2 * (d * PER_DISTANCE + p) : 2 * (d * PER_DISTANCE + p) + 2]
            )
            codes[b] = codes[a]
            blocks = list(rng.permutation(RADIUS + 1)[: min(d, RADIUS + 1)])
            _flip_one_bit_per_block(codes[b], blocks, rng)
            if d == RADIUS + 2:  # one more bit anywhere (the pair is classed by its distance)
                bit = int(rng.integers(BITS))
                codes[b][bit // 8] ^= np.uint8(1 << (bit % 8))
            distance = int(np.unpackbits(codes[a] ^ codes[b]).sum())
            (inside if distance <= RADIUS else outside).add((min(a, b), max(a, b)))
    return codes, inside, outside


def _pair_set(rows: np.ndarray, cols: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def test_blocks_are_disjoint_and_cover_every_bit():
    for radius in (0, 1, 4, 7, 63):
        bounds = block_bounds(radius)
        assert len(bounds) == radius + 1
        bits = [lo + i for lo, size in bounds for i in range(size)]
        assert sorted(bits) == list(range(BITS))
    with pytest.raises(ValueError, match="radius 64"):
        block_bounds(64)


def test_every_code_is_in_one_bucket_per_block_at_most():
    codes = np.random.default_rng(1).integers(0, 256, (1000, 8), dtype=np.uint8)
    members = bucket_members(codes, RADIUS, 16)
    counts = np.bincount(np.concatenate(members), minlength=1000)
    assert counts.min() >= 1 and counts.max() <= RADIUS + 1
    assert np.array_equal(np.concatenate(bucket_members(codes, RADIUS, 1)), np.arange(1000))


def test_bucketed_equals_single_pass_with_less_memory_per_task(tmp_path: Path):
    """200k codes, pairs planted at distances 0..r and just outside: 64 buckets find the
    global search's pair set exactly; each bucket's task, run in a fresh process, grows
    its resident memory less than the single pass's task does."""
    codes, inside, outside = _planted(np.random.default_rng(0))
    single = _pair_set(*hamming_pairs(codes, RADIUS, SPEC))
    assert inside <= single and not (outside & single)

    assert (
        _pair_set(*bucketed_hamming_pairs(codes, RADIUS, SPEC, 64, str(tmp_path / "b"))) == single
    )

    one = write_bucket_jobs(codes, RADIUS, 1, SPEC, str(tmp_path / "one"))
    jobs = write_bucket_jobs(codes, RADIUS, 64, SPEC, str(tmp_path / "many"))
    largest = max(jobs, key=lambda job: Path(job.ids).stat().st_size)
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, maxtasksperchild=1) as pool:  # a fresh process per task
        single_run, bucket_run = pool.map(search_bucket, [one[0], largest])
    assert _pair_set(*union_pairs([single_run])) == single
    assert bucket_run.codes < N / 8
    assert 0 < bucket_run.peak_bytes < single_run.peak_bytes / 2, (bucket_run, single_run)


def test_buckets_run_as_mapped_prefect_tasks(prefect_harness, tmp_path: Path):
    """In a flow, ``map_as_tasks`` runs one Prefect task per bucket on the flow's task runner."""
    from prefect import flow

    from flows.common import map_as_tasks
    from tasks.core.config import ExecutionConfig
    from tests.fixtures_prefect import run_records

    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (5000, 8), dtype=np.uint8)
    codes[4000:] = codes[:1000]
    codes[4000:, 3] ^= np.uint8(0b1001)  # distance 2

    @flow
    def bucketed_search() -> set[tuple[int, int]]:
        mapped = partial(map_as_tasks, "curate", ExecutionConfig())
        return _pair_set(*bucketed_hamming_pairs(codes, RADIUS, SPEC, 8, str(tmp_path), mapped))

    state = bucketed_search(return_state=True)
    assert state.result() == _pair_set(*hamming_pairs(codes, RADIUS, SPEC))
    _, task_runs = run_records(state.state_details.flow_run_id)
    searched = [t for t in task_runs if t.name.startswith("curate-search_bucket")]
    assert len(searched) == 8 and all(t.state.is_completed() for t in searched)
