"""Benchmark: binary-hash and embedding pair search vs exact brute force (index recall only;
bench_dedup_quality.py measures whether the near-duplicates found are right).

    .venv/bin/python bench/bench_dedup.py           # hashes 50k/200k/1M, embeddings 50k/200k
    .venv/bin/python bench/bench_dedup.py --quick   # small sizes

64-bit perceptual hashes: FAISS multi-index hashing in the layout `multihash_layout` picks
(the cheapest exact layout for n, e.g. 3 substrings of 21 bits each
probed within 1 bit flip at 1M; exact by the pigeonhole principle) vs a flat binary index
(every pair compared), at Hamming radius 4. 512-d embeddings: SemDeDup as the stage runs it
(FAISS k-means, then one matrix product per cluster, nprobe 4) vs a flat inner-product
index, at cosine distance eps 0.05.

Duplicates are planted (1 % of rows, copies with up to `radius` bits flipped / a little
noise). Recall and precision are over duplicate pairs against brute force. Where brute
force over every query would take too long here, it runs on a random sample of queries: its
time is extrapolated (marked ~) and recall is measured on the sampled queries' pairs.
Writes bench/results/dedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tasks.curate.dedup import BinaryIndexSpec, embedding_pairs, hamming_pairs, multihash_layout

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"
RADIUS = 4
EPS = 0.05
BRUTE_QUERIES = 2_000


def planted_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 8) uint8 codes: random hashes, the last 1 % copies of others with <= RADIUS flips."""
    codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    copies = n // 100
    sources = rng.choice(n - copies, size=copies, replace=False)
    codes[n - copies :] = codes[sources]
    for row in range(n - copies, n):
        for bit in rng.choice(64, size=rng.integers(0, RADIUS + 1), replace=False):
            codes[row, bit // 8] ^= np.uint8(1 << (bit % 8))
    return codes


def planted_embeddings(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) unit rows in clusters (members at cosine ~0.5), the last 1 % near copies."""
    centers = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), size=n)] + rng.standard_normal((n, dim)).astype(
        np.float32
    )
    copies = n // 100
    sources = rng.choice(n - copies, size=copies, replace=False)
    x[n - copies :] = x[sources] + 0.05 * rng.standard_normal((copies, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def pair_set(rows: np.ndarray, cols: np.ndarray) -> set[tuple[int, int]]:
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    keep = lo != hi
    return set(zip(lo[keep].tolist(), hi[keep].tolist(), strict=True))


def brute_force(
    search: Any, n: int, rng: np.random.Generator
) -> tuple[float, bool, set[tuple[int, int]], np.ndarray]:
    """Run ``search(query_ids)`` over every query or a sample; returns (seconds, extrapolated,
    pairs found, query ids)."""
    sampled = n > BRUTE_QUERIES * 5
    queries = np.sort(rng.choice(n, BRUTE_QUERIES, replace=False)) if sampled else np.arange(n)
    start = time.perf_counter()
    pairs = search(queries)
    seconds = time.perf_counter() - start
    return (seconds * n / len(queries) if sampled else seconds), sampled, pairs, queries


def score(found: set, truth: set, queries: np.ndarray, n: int) -> tuple[float, float]:
    """Recall and precision of ``found`` against brute-force ``truth`` (restricted to the
    queried rows when brute force ran on a sample)."""
    if len(queries) < n:
        asked = set(queries.tolist())
        found = {p for p in found if p[0] in asked or p[1] in asked}
    hit = len(found & truth)
    return hit / max(1, len(truth)), hit / max(1, len(found))


def bench_hashes(n: int, rng: np.random.Generator) -> dict[str, Any]:
    codes = planted_hashes(n, rng)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)

    def search(queries: np.ndarray) -> set[tuple[int, int]]:
        lims, _, found = flat.range_search(codes[queries], RADIUS + 1)
        rows = np.repeat(queries, np.diff(lims).astype(np.int64))
        return pair_set(rows, found.astype(np.int64))

    brute_s, sampled, truth, queries = brute_force(search, n, rng)
    start = time.perf_counter()
    rows, cols = hamming_pairs(codes, RADIUS, BinaryIndexSpec("multihash"))  # cheapest layout
    seconds = time.perf_counter() - start
    recall, precision = score(pair_set(rows, cols), truth, queries, n)
    nhash, nflip, _ = multihash_layout(n, RADIUS)
    print(f"  {n:,} hashes: {nhash} substrings of {64 // nhash} bits, {nflip} flip(s)")
    return _row("phash-64bit", "multihash", n, seconds, brute_s, sampled, recall, precision)


def bench_embeddings(n: int, rng: np.random.Generator, dim: int = 512) -> dict[str, Any]:
    x = planted_embeddings(n, dim, rng)
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)

    def search(queries: np.ndarray) -> set[tuple[int, int]]:
        lims, _, found = flat.range_search(x[queries], 1.0 - EPS)
        rows = np.repeat(queries, np.diff(lims).astype(np.int64))
        return pair_set(rows, found.astype(np.int64))

    brute_s, sampled, truth, queries = brute_force(search, n, rng)
    start = time.perf_counter()
    rows, cols = embedding_pairs(x, EPS, clusters=0, nprobe=4)
    seconds = time.perf_counter() - start
    recall, precision = score(pair_set(rows, cols), truth, queries, n)
    return _row(
        f"embedding-{dim}d", "semdedup-kmeans", n, seconds, brute_s, sampled, recall, precision
    )


def _row(data: str, method: str, n: int, ours: float, brute: float, sampled: bool,
         recall: float, precision: float) -> dict[str, Any]:  # fmt: skip
    return {"data": data, "method": method, "n": n, "seconds": ours, "brute_seconds": brute,
            "brute_extrapolated": sampled, "speedup": brute / ours, "recall": recall,
            "precision": precision}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    hash_sizes = (10_000, 20_000, 50_000) if args.quick else (50_000, 200_000, 1_000_000)
    emb_sizes = (5_000, 20_000) if args.quick else (50_000, 200_000)
    rng = np.random.default_rng(0)
    rows = [bench_hashes(n, rng) for n in hash_sizes]
    rows += [bench_embeddings(n, rng) for n in emb_sizes]
    print(f"{'data':<16}{'method':<14}{'n':>9}{'ours s':>9}{'brute s':>10}{'speedup':>9}"
          f"{'recall':>8}{'precision':>10}")  # fmt: skip
    for r in rows:
        brute = f"{'~' if r['brute_extrapolated'] else ''}{r['brute_seconds']:.2f}"
        print(f"{r['data']:<16}{r['method']:<14}{r['n']:>9,}{r['seconds']:>9.2f}{brute:>10}"
              f"{r['speedup']:>8.1f}x{r['recall']:>8.3f}{r['precision']:>10.3f}")  # fmt: skip
    for method in ("multihash", "semdedup-kmeans"):
        mine = [r for r in rows if r["method"] == method]
        growth = " -> ".join(f"{r['seconds']:.2f}s" for r in mine)
        sizes = " -> ".join(f"{r['n']:,}" for r in mine)
        print(f"time growth {method} ({sizes}): {growth}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "radius": RADIUS, "eps": EPS,
                                   "cpus": os.cpu_count(), "machine": platform.machine(),
                                   "faiss": faiss.__version__}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
