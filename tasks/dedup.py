"""Duplicate removal: exact (SQL), near-duplicate pHash (FAISS binary index), semantic
(SemDeDup on image embeddings, FAISS IVF), and eval-set decontamination.

Every step works on the rows still alive after the previous one, groups duplicates with
connected components, keeps the preferred row of each group (rows no quality rule drops,
then the most pixels, then the lowest key) and records for each dropped row the key it
duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import faiss
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.config import CurateConfig
from tasks.phash import HASH_BYTES, hashes_to_bytes
from tasks.sql import run_sql

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
    radius by the pigeonhole principle, ~linear), 'ivf' (approximate, nprobe cells)."""

    kind: str
    ivf_nprobe: int = 16


def choose_binary_index(cfg: CurateConfig, n: int, radius: int) -> BinaryIndexSpec:
    """The configured index, or for 'auto': flat up to phash_flat_max_rows, then multi-index
    hashing while each of the radius+1 substrings keeps >= 8 bits, else IVF."""
    kind = cfg.phash_index
    if kind == "auto":
        if n <= cfg.phash_flat_max_rows:
            kind = "flat"
        else:
            kind = "multihash" if BITS // (radius + 1) >= 8 else "ivf"
    return BinaryIndexSpec(kind, cfg.phash_ivf_nprobe)


def build_binary_index(codes: np.ndarray, radius: int, spec: BinaryIndexSpec) -> faiss.IndexBinary:
    """A FAISS binary index over (n, 8) uint8 codes, ready for range search at ``radius``."""
    index: faiss.IndexBinary
    if spec.kind == "flat":
        index = faiss.IndexBinaryFlat(BITS)
    elif spec.kind == "multihash":
        # radius+1 disjoint substrings: a pair within `radius` bits agrees exactly on one.
        nhash = radius + 1
        index = faiss.IndexBinaryMultiHash(BITS, nhash, BITS // nhash)
    elif spec.kind == "ivf":
        nlist = max(1, min(int(np.sqrt(len(codes))), len(codes) // 39 or 1))
        ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(BITS), BITS, nlist)
        ivf.train(codes)
        ivf.nprobe = min(spec.ivf_nprobe, nlist)
        index = ivf
    else:
        raise ValueError(f"curate.phash_index: unknown index kind {spec.kind!r}")
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
    embeddings: np.ndarray, eps: float, clusters: int, nprobe: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup pairs i < j with cosine distance 1 - cos < eps, searched within k-means
    clusters (an IVF index: nprobe=1 is SemDeDup exactly, more probes find pairs split
    across cluster borders). ``embeddings``: (n, d) float32, L2-normalised rows."""
    n, dim = embeddings.shape
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = max(1, min(clusters or int(np.sqrt(n)), n // 39 or 1))
    kmeans = faiss.Kmeans(dim, k, niter=20, seed=seed, spherical=True,
                          gpu=faiss.get_num_gpus() > 0)  # fmt: skip
    kmeans.train(x)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, k, faiss.METRIC_INNER_PRODUCT)
    index.quantizer.add(np.asarray(kmeans.centroids, dtype=np.float32))
    index.is_trained = True
    index.add(x)
    index.nprobe = min(nprobe, k)
    lims, _, found = index.range_search(x, 1.0 - eps)  # inner product: keeps sim > radius
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims).astype(np.int64))
    cols = found.astype(np.int64)
    keep = rows < cols
    return rows[keep], cols[keep]


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
    """Per dedup rule, the rids it drops and the key each duplicates."""

    dropped: dict[str, dict[int, str]]


def run_dedup(
    con: duckdb.DuckDBPyConnection,
    cfg: CurateConfig,
    embeddings_for: Callable[[np.ndarray], np.ndarray] | None = None,
) -> DedupOutcome:
    """Run every dedup step over table ``rules`` (needs tables ``live`` and ``contamination``).
    ``embeddings_for(rids)`` returns (n, d) image embeddings when semantic dedup is on."""
    outcome = DedupOutcome({rule: {} for rule in DEDUP_RULES})
    run_sql(con, "dedup_candidates")
    for rule in EXACT_RULES:
        pairs = run_sql(con, "exact_duplicates", {"rule": rule}).fetchall()
        _drop(con, outcome.dropped[f"duplicate_{rule}"], {int(r): str(k) for r, k in pairs})
    frame = run_sql(con, "dedup_candidates_ordered").fetchnumpy()
    rids, keys = np.asarray(frame["rid"], np.int64), np.asarray(frame["key"], object)
    radius = cfg.phash_hamming_radius
    spec = choose_binary_index(cfg, len(rids), radius)
    rows, cols = hamming_pairs(hashes_to_bytes(np.asarray(frame["phash"], np.int64)), radius, spec)
    _drop(con, outcome.dropped["near_duplicate"], _named_duplicates(rids, keys, rows, cols))
    if cfg.semantic_dedup:
        if embeddings_for is None:
            raise ValueError(
                "curate.semantic_dedup needs image embeddings: set clip_score_checkpoint"
            )
        frame = run_sql(con, "dedup_candidates_ordered").fetchnumpy()
        rids, keys = np.asarray(frame["rid"], np.int64), np.asarray(frame["key"], object)
        rows, cols = embedding_pairs(
            embeddings_for(rids), cfg.semantic_dedup_eps, cfg.semantic_dedup_clusters,
            cfg.semantic_dedup_nprobe,
        )  # fmt: skip
        _drop(con, outcome.dropped["semantic_duplicate"], _named_duplicates(rids, keys, rows, cols))
    log.info("dedup: %s", {rule: len(d) for rule, d in outcome.dropped.items()})
    return outcome


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
        run_sql(con, "mark_dropped")
        con.unregister("gone")


def decontamination_matches(
    train_hashes: np.ndarray, eval_hashes: np.ndarray, eval_labels: list[str], radius: int
) -> dict[int, str]:
    """{train row index: eval image label} for training images within ``radius`` bits of any
    evaluation image (a flat index over the eval set: it is small and recall must be exact)."""
    if len(train_hashes) == 0 or len(eval_hashes) == 0:
        return {}
    rows, cols = hamming_pairs(
        hashes_to_bytes(eval_hashes), radius, BinaryIndexSpec("flat"),
        queries=hashes_to_bytes(train_hashes),
    )  # fmt: skip
    matches: dict[int, str] = {}
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        matches.setdefault(i, eval_labels[j])
    return matches
