"""Benchmark and identity check: curate's FAISS searches on the GPU against the CPU.

    .venv/bin/python bench/bench_faiss_gpu.py            # 200k images, 200k embeddings
    .venv/bin/python bench/bench_faiss_gpu.py --quick    # 20k each

Needs the GPU build of FAISS (README, "GPU FAISS") and a CUDA device; elsewhere it says so
and exits 0 without numbers (nothing is ever claimed from the CPU). On a GPU machine:
- near-duplicate candidates (``near_dup.candidate_pairs`` with its FAISS IVF index, what the
  stage builds past ``near_dup_flat_max_rows`` views) on synthetic thumbnail views with
  planted copies, ``faiss_device`` cpu vs gpu: the pair sets must be identical (exit 1 if
  not), and the time ratio;
- SemDeDup (``dedup.embedding_pairs``), cpu vs gpu k-means: the pairs each finds, their
  overlap, and the time ratio (k-means rounds differently on a GPU: border pairs may differ).
Writes bench/results/faiss_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tasks.curate.dedup import embedding_pairs
from tasks.curate.faiss_device import gpu_count
from tasks.curate.near_dup import THUMB, VIEWS, MatchConfig, candidate_pairs

RESULTS = Path(__file__).resolve().parent / "results" / "faiss_gpu.json"


def thumbnails(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, VIEWS, THUMB, THUMB, 3) uint8 views: smooth random images, 1 % planted copies
    with a little noise."""
    coarse = rng.integers(0, 256, (n, VIEWS, 4, 4, 3), dtype=np.uint8)
    views = coarse.repeat(THUMB // 4, axis=2).repeat(THUMB // 4, axis=3)
    copies = rng.choice(n, n // 100, replace=False)
    sources = rng.choice(n, n // 100)
    noise = rng.integers(-3, 4, views[copies].shape)
    views[copies] = np.clip(views[sources].astype(int) + noise, 0, 255).astype(np.uint8)
    return views


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    n = 20_000 if parser.parse_args().quick else 200_000
    if gpu_count() == 0:
        print("FAISS sees no GPU here (a CPU build, or no CUDA device): nothing to compare.")
        return 0
    rng = np.random.default_rng(0)
    views = thumbnails(n, rng)
    cfg = MatchConfig(
        min_similarity=0.99, candidate_k=4, candidate_min_similarity=0.6, flat_max_rows=0
    )
    cpu, cpu_s = timed(candidate_pairs, views, replace(cfg, faiss_device="cpu"))
    gpu, gpu_s = timed(candidate_pairs, views, replace(cfg, faiss_device="gpu"))
    same = set(zip(*cpu, strict=True)) == set(zip(*gpu, strict=True))
    x = rng.standard_normal((n, 512)).astype(np.float32)
    x[: n // 100] = x[n // 100 : 2 * (n // 100)] + 0.01 * rng.standard_normal((n // 100, 512))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    e_cpu, e_cpu_s = timed(embedding_pairs, x, 0.05, 0, 4, device="cpu")
    e_gpu, e_gpu_s = timed(embedding_pairs, x, 0.05, 0, 4, device="gpu")
    a, b = set(zip(*e_cpu, strict=True)), set(zip(*e_gpu, strict=True))
    results = {
        "rows": n,
        "gpus": gpu_count(),
        "candidate_pairs": {"cpu_s": cpu_s, "gpu_s": gpu_s, "pairs": len(cpu[0]),
                            "identical": same},
        "semantic_pairs": {"cpu_s": e_cpu_s, "gpu_s": e_gpu_s, "cpu_pairs": len(a),
                           "gpu_pairs": len(b), "common": len(a & b)},
    }  # fmt: skip
    print(f"{'search':<24}{'cpu s':>10}{'gpu s':>10}{'cpu/gpu':>10}  result")
    print(f"{'near-dup candidates':<24}{cpu_s:>10.2f}{gpu_s:>10.2f}{cpu_s / gpu_s:>9.1f}x"
          f"  {len(cpu[0])} pairs, identical: {same}")  # fmt: skip
    print(f"{'SemDeDup':<24}{e_cpu_s:>10.2f}{e_gpu_s:>10.2f}{e_cpu_s / e_gpu_s:>9.1f}x"
          f"  cpu {len(a)}, gpu {len(b)}, common {len(a & b)}")  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
