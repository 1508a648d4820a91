"""Duplicate removal: exact (SQL), near-duplicate (nearest-view candidates over thumbnails,
searched in one pass or in mapped shards (tasks.curate.knn_shards), each pair verified by
aligned correlation: tasks.curate.near_dup), semantic (SemDeDup on image embeddings, FAISS
IVF), and eval-set decontamination (the near-duplicate matcher again, one pass).

The binary-hash search below (``hamming_pairs``) finds pHash pairs within a Hamming radius;
the stage no longer drops on it (a 64-bit pHash of a 28 px image does not tell a copy from a
look-alike), bench/bench_dedup.py measures its index; tasks.curate.buckets splits it into
buckets searched as separate tasks (the same pairs, memory bounded per task).

Every step works on the rows still alive after the previous one, groups duplicates with
connected components, keeps the preferred row of each group (rows no quality rule drops,
then the most pixels, then the content: image hash, URL, caption; never the key, which
follows the download's row order) and records for each dropped row the key it duplicates.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import faiss
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.core.config import CurateConfig
from tasks.core.sql import run_sql
from tasks.core.stage import MapTasks, map_in_process
from tasks.curate.faiss_device import FaissDevice, uses_gpu
from tasks.curate.knn_shards import sharded_candidate_pairs
from tasks.curate.near_dup import (
    VIEWS,
    MatchConfig,
    candidate_pairs,
    cross_matches,
    local_vetoes,
    pair_similarity,
    thumbnails_array,
    thumbnails_resolution,
    verify,
)
from tasks.curate.phash import HASH_BYTES

log = logging.getLogger(__name__)

EXACT_RULES: tuple[str, ...] = ("sha256", "url", "caption_image")
DEDUP_RULES: tuple[str, ...] = (
    "duplicate_sha256",
    "duplicate_url",
    "duplicate_caption_image",
    "near_duplicate",
    "semantic_duplicate",
)
BITS = HASH_BYTES * 8


@dataclass(frozen=True)
class BinaryIndexSpec:
    """How to search 64-bit hashes: 'flat' (exact, O(n^2)), 'multihash' (exact within the
    radius by the pigeonhole principle, ~linear), 'ivf' (approximate, nprobe cells).

    For 'multihash', ``nhash`` disjoint substrings of ``BITS // nhash`` bits are hashed and
    each query probes every bucket within ``nflip`` bit flips of its own substrings; 0 means
    "pick the cheapest exact layout for this n and radius" (see ``multihash_layout``)."""

    kind: str
    ivf_nprobe: int = 16
    nhash: int = 0
    nflip: int = 0


def multihash_layout(n: int, radius: int) -> tuple[int, int, float]:
    """The cheapest exact multi-index hashing layout: (nhash, nflip, estimated cost per query).

    A pair within ``radius`` bits differs in at most ``radius // nhash`` bits on one of the
    ``nhash`` substrings (pigeonhole), so probing every bucket within that many flips finds
    it. Per query that costs ``nhash * sum(C(b, k) for k <= nflip)`` bucket lookups, each
    returning about ``n / 2**b`` candidates to compare. At radius 4 and 1M hashes this picks
    3 x 21 bits with 1 flip (~70 lookups, ~35 candidates) over 5 x 12 bits with none
    (~1,200 candidates)."""
    best: tuple[int, int, float] | None = None
    for nhash in range(1, BITS // 8 + 1):
        bits = BITS // nhash
        nflip = radius // nhash
        if nflip > 3:  # C(b, 4) lookups per substring: never the cheapest layout
            continue
        lookups = nhash * sum(math.comb(bits, k) for k in range(nflip + 1))
        cost = lookups * (1.0 + n / 2.0**bits)
        if best is None or cost < best[2]:
            best = (nhash, nflip, cost)
    if best is None:
        return BITS // 8, radius // (BITS // 8), math.inf
    return best


def build_binary_index(codes: np.ndarray, radius: int, spec: BinaryIndexSpec) -> faiss.IndexBinary:
    """A FAISS binary index over (n, 8) uint8 codes, ready for range search at ``radius``."""
    index: faiss.IndexBinary
    if spec.kind == "flat":
        index = faiss.IndexBinaryFlat(BITS)
    elif spec.kind == "multihash":
        nhash, nflip = spec.nhash, spec.nflip
        if nhash == 0:
            nhash, nflip, _ = multihash_layout(len(codes), radius)
        if nhash * (nflip + 1) <= radius:
            raise ValueError(
                f"multihash with {nhash} substrings and {nflip} flips misses pairs at "
                f"Hamming radius {radius}"
            )
        mh = faiss.IndexBinaryMultiHash(BITS, nhash, BITS // nhash)
        mh.nflip = nflip
        index = mh
    elif spec.kind == "ivf":
        nlist = max(1, min(int(np.sqrt(len(codes))), len(codes) // 39 or 1))
        ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(BITS), BITS, nlist)
        ivf.train(codes)
        ivf.nprobe = min(spec.ivf_nprobe, nlist)
        index = ivf
    else:
        raise ValueError(f"unknown binary index kind {spec.kind!r}")
    index.add(codes)
    return index


def hamming_pairs(
    codes: np.ndarray, radius: int, spec: BinaryIndexSpec, queries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query i, database j) within ``radius`` bits. Without ``queries`` the database
    queries itself and each unordered pair is returned once, i < j."""
    if len(codes) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    index = build_binary_index(codes, radius, spec)
    probe = codes if queries is None else queries
    lims, _, found = index.range_search(probe, radius + 1)  # FAISS keeps distance < radius
    rows = np.repeat(np.arange(len(probe), dtype=np.int64), np.diff(lims).astype(np.int64))
    cols = found.astype(np.int64)
    if queries is None:
        keep = rows < cols
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def embedding_pairs(
    embeddings: np.ndarray,
    eps: float,
    clusters: int,
    nprobe: int,
    seed: int = 0,
    device: FaissDevice = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup pairs i < j with cosine distance 1 - cos < eps, searched within k-means
    clusters. ``embeddings``: (n, d) float32, L2-normalised rows.

    FAISS k-means (spherical) clusters the rows and assigns each row to its nearest
    centroid, its home. As in SemDeDup, each cluster's pairwise cosines are one matrix
    product; a row is also compared with the homes of its next ``nprobe - 1`` centroids
    (nprobe=1 is SemDeDup exactly, more probes find pairs split across cluster borders).
    ``device``: where k-means trains (``curate.faiss_device``); a GPU rounds its sums in
    another order, so a pair found only across a cluster border may differ from the CPU's."""
    n, dim = embeddings.shape
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = max(1, min(clusters or int(np.sqrt(n)), n // 39 or 1))
    kmeans = faiss.Kmeans(dim, k, niter=20, seed=seed, spherical=True, gpu=uses_gpu(device))
    kmeans.train(x)
    centroids = faiss.IndexFlatIP(dim)
    centroids.add(np.asarray(kmeans.centroids, dtype=np.float32))
    probes = min(nprobe, k)
    _, nearest = centroids.search(x, probes)  # (n, probes) centroid ids, nearest first
    home_rows, home_bounds = _grouped(nearest[:, 0], k)
    probe_rows, probe_bounds = _grouped(nearest.ravel(), k)
    probe_rows //= probes  # flattened (row, probe) position -> row
    found_rows, found_cols = [], []
    for c in range(k):
        members = home_rows[home_bounds[c] : home_bounds[c + 1]]
        queries = probe_rows[probe_bounds[c] : probe_bounds[c + 1]]
        if len(members) == 0 or len(queries) == 0:
            continue
        block = x[members].T
        step = max(1, _BLOCK_ELEMENTS // len(members))  # bounds memory on skewed clusters
        for start in range(0, len(queries), step):
            part = queries[start : start + step]
            i, j = np.nonzero(x[part] @ block > 1.0 - eps)
            found_rows.append(part[i])
            found_cols.append(members[j])
    if not found_rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols = np.concatenate(found_rows), np.concatenate(found_cols)
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs = np.unique(lo[lo != hi] * n + hi[lo != hi])  # each unordered pair once
    return pairs // n, pairs % n


_BLOCK_ELEMENTS = 1 << 24  # similarity entries per matrix product (64 MiB of float32)


def _grouped(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``labels`` sorted by label, and the bounds of each label's run."""
    order = np.argsort(labels, kind="stable").astype(np.int64)
    return order, np.searchsorted(labels[order], np.arange(k + 1))


def survivors_of(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """For n items in preference order and duplicate pairs, each item's group survivor: the
    group's lowest index (itself when it survives). Shape (n,) int64."""
    if len(rows) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    return first[labels]


@dataclass
class DedupOutcome:
    """Per dedup rule, the rids it drops and the key each duplicates; per rule the number of
    duplicate pairs found (a group of g rows found by an exact rule counts g - 1)."""

    dropped: dict[str, dict[int, str]]
    pairs: dict[str, int]


def match_config(cfg: CurateConfig) -> MatchConfig:
    """The near-duplicate matcher's thresholds, from the curate config."""
    return MatchConfig(
        min_similarity=cfg.near_dup_min_similarity,
        band_min_similarity=cfg.near_dup_band_min_similarity,
        max_residual_concentration=cfg.near_dup_max_residual_concentration,
        band_max_distance_ratio=cfg.near_dup_band_max_distance_ratio,
        candidate_k=cfg.near_dup_candidate_k,
        candidate_min_similarity=cfg.near_dup_candidate_min_similarity,
        max_distance_ratio=cfg.near_dup_max_distance_ratio,
        ratio_rank=cfg.near_dup_ratio_rank,
        flat_max_rows=cfg.near_dup_flat_max_rows,
        ivf_nprobe=cfg.near_dup_ivf_nprobe,
        faiss_device=cfg.faiss_device,
        local_max_share=cfg.near_dup_local_max_share,
        local_min_residual=cfg.near_dup_local_min_residual,
        local_min_border=cfg.near_dup_local_min_border,
    )


def run_dedup(
    con: duckdb.DuckDBPyConnection,
    cfg: CurateConfig,
    embeddings_for: Callable[[np.ndarray], np.ndarray] | None = None,
    map_tasks: MapTasks = map_in_process,
    workdir: str | None = None,
) -> DedupOutcome:
    """Run every dedup step over table ``rules`` (needs tables ``live`` and ``contamination``).
    ``embeddings_for(rids)`` returns (n, d) image embeddings when semantic dedup is on;
    ``map_tasks`` runs the near-duplicate search's shards (``near_dup_shards``), their files
    under ``workdir`` (any fsspec URI; a local temporary folder when None)."""
    outcome = DedupOutcome({rule: {} for rule in DEDUP_RULES}, {rule: 0 for rule in DEDUP_RULES})
    run_sql(con, "curate/dedup_candidates")
    for rule in EXACT_RULES:
        pairs = run_sql(con, "curate/exact_duplicates", {"rule": rule}).fetchall()
        _drop(con, outcome.dropped[f"duplicate_{rule}"], {int(r): str(k) for r, k in pairs})
        outcome.pairs[f"duplicate_{rule}"] = len(pairs)
    frame = run_sql(con, "curate/dedup_candidates_ordered").fetchnumpy()
    rids, keys = np.asarray(frame["rid"], np.int64), np.asarray(frame["key"], object)
    near = match_config(cfg)
    blobs = list(frame["thumb"])
    thumbs = thumbnails_array(blobs)
    resolution = thumbnails_resolution(blobs, np.asarray(frame["native_detail"], np.float64))
    rows, cols = _near_candidates(thumbs, cfg, near, map_tasks, workdir)
    sims = pair_similarity(thumbs, thumbs, rows, cols, resolution, resolution)
    passed = verify(thumbs, thumbs, rows, cols, sims, near, resolution, resolution,
                    local_veto=False)  # fmt: skip
    vetoed = local_vetoes(thumbs, thumbs, rows, cols, passed, near, resolution, resolution)
    duplicate = passed & ~vetoed
    _register_near_pairs(con, rids[rows], rids[cols], sims, duplicate, vetoed)
    rows, cols = rows[duplicate], cols[duplicate]
    outcome.pairs["near_duplicate"] = int(duplicate.sum())
    _drop(con, outcome.dropped["near_duplicate"], _named_duplicates(rids, keys, rows, cols))
    if cfg.semantic_dedup:
        if embeddings_for is None:
            raise ValueError(
                "curate.semantic_dedup needs image embeddings: set clip_score_checkpoint"
            )
        frame = run_sql(con, "curate/dedup_candidates_ordered").fetchnumpy()
        rids, keys = np.asarray(frame["rid"], np.int64), np.asarray(frame["key"], object)
        rows, cols = embedding_pairs(
            embeddings_for(rids), cfg.semantic_dedup_eps, cfg.semantic_dedup_clusters,
            cfg.semantic_dedup_nprobe, device=cfg.faiss_device,
        )  # fmt: skip
        _drop(con, outcome.dropped["semantic_duplicate"], _named_duplicates(rids, keys, rows, cols))
        outcome.pairs["semantic_duplicate"] = len(rows)
    log.info("dedup: %s", {rule: len(d) for rule, d in outcome.dropped.items()})
    return outcome


def _near_candidates(
    thumbs: np.ndarray, cfg: CurateConfig, near: MatchConfig, map_tasks: MapTasks,
    workdir: str | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Candidate pairs i < j: one search, or ``near_dup_shards`` mapped shard searches where
    the single pass would search flat (they find the same pairs). Beyond ``flat_max_rows``
    views the single pass is IVF, which sharding would replace by an exact search: the
    shard count must not change what curate writes, so it searches once there."""
    views = len(thumbs) * VIEWS
    if cfg.near_dup_shards <= 1 or views > cfg.near_dup_flat_max_rows:
        if cfg.near_dup_shards > 1:
            log.warning("near-dup: %d views > near_dup_flat_max_rows %d, so one IVF search, "
                        "not %d shards", views, cfg.near_dup_flat_max_rows, cfg.near_dup_shards)  # fmt: skip
        return candidate_pairs(thumbs, near)
    if workdir is not None:
        return sharded_candidate_pairs(thumbs, near, cfg.near_dup_shards, workdir, map_tasks)
    with tempfile.TemporaryDirectory(prefix="clipflow-knn-") as tmp:
        return sharded_candidate_pairs(thumbs, near, cfg.near_dup_shards, tmp, map_tasks)


def _named_duplicates(
    rids: np.ndarray, keys: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> dict[int, str]:
    survivor = survivors_of(len(rids), rows, cols)
    dropped = np.nonzero(survivor != np.arange(len(rids)))[0]
    return {int(rids[i]): str(keys[survivor[i]]) for i in dropped}


def _drop(con: duckdb.DuckDBPyConnection, into: dict[int, str], found: dict[int, str]) -> None:
    into.update(found)
    if found:
        gone = pa.table({"rid": pa.array(list(found.keys()), pa.int64())})
        con.register("gone", gone)
        run_sql(con, "curate/mark_dropped")
        con.unregister("gone")


def _register_near_pairs(
    con: duckdb.DuckDBPyConnection,
    rid_a: np.ndarray,
    rid_b: np.ndarray,
    sims: np.ndarray,
    duplicate: np.ndarray,
    vetoed: np.ndarray,
) -> None:
    """Table ``near_pairs`` (rid_a, rid_b, similarity, verified, vetoed): every candidate
    pair with its verified similarity and verdict, and whether the local-difference veto
    refused it, for the report's gallery of the pairs closest to the decision."""
    table = pa.table({
        "rid_a": pa.array(rid_a, pa.int64()), "rid_b": pa.array(rid_b, pa.int64()),
        "similarity": pa.array(sims, pa.float64()), "verified": pa.array(duplicate),
        "vetoed": pa.array(vetoed),
    })  # fmt: skip
    con.register("near_pairs_arrow", table)
    con.execute("CREATE OR REPLACE TABLE near_pairs AS SELECT * FROM near_pairs_arrow")
    con.unregister("near_pairs_arrow")


def decontamination_matches(
    train_thumbs: np.ndarray,
    eval_thumbs: np.ndarray,
    eval_labels: list[str],
    cfg: MatchConfig,
    train_resolution: np.ndarray | None = None,
    eval_resolution: np.ndarray | None = None,
) -> dict[int, str]:
    """{train row index: eval image label} for training images that the near-duplicate
    matcher pairs with an evaluation image (thumbnails as ``thumbnails_array`` gives them,
    resolutions as ``thumbnails_resolution``)."""  # fmt: skip
    if len(train_thumbs) == 0 or len(eval_thumbs) == 0:
        return {}
    rows, cols, sims = cross_matches(train_thumbs, eval_thumbs, cfg, train_resolution,
                                     eval_resolution)  # fmt: skip
    matches: dict[int, str] = {}
    for i in np.argsort(-sims, kind="stable"):  # each training image names its closest match
        matches.setdefault(int(rows[i]), eval_labels[int(cols[i])])
    return matches
