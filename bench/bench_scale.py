"""Benchmark: curate's mapped per-shard work on the flow's own threads (execution.runner
local) vs a 2-worker local Dask cluster (execution.runner dask), side by side.

    .venv/bin/python bench/bench_scale.py            # 1M rows in 100 shards
    .venv/bin/python bench/bench_scale.py --quick    # 100k rows in 20 shards

Image features are taken as precomputed (decoding images is not what is measured): each
mapped task reads one synthetic download shard parquet, computes the per-row text features
with the stage's own functions (caption decoding and normalisation, word counts, URL hosts)
and writes its part, through ``flows.common.map_as_tasks`` as the stage does. Then many
tiny tasks measure the runner's overhead per task. Prints the table and the ratios; writes
bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow

from flows.common import map_as_tasks
from tasks.core.config import ExecutionConfig
from tasks.curate.features import decode_caption, normalise_caption, url_host

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"


def write_shards(folder: Path, rows: int, shards: int, seed: int = 0) -> list[str]:
    """``shards`` download-shard-like parquets (key, url, page_url, caption bytes)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"word{i}" for i in range(2000)] + ["photo", "of", "a", "the", "red"])
    per = rows // shards
    uris = []
    for s in range(shards):
        words = rng.choice(vocab, size=(per, 12))
        lengths = rng.integers(1, 13, size=per)
        captions = [" ".join(row[:k]).encode() for row, k in zip(words, lengths, strict=True)]
        hosts = rng.integers(0, 500, size=per)
        urls = [f"https://cdn{h}.site{h % 97}.com/img/{s}-{i}.jpg" for i, h in enumerate(hosts)]
        path = folder / f"{s:05d}.parquet"
        pq.write_table(
            pa.table({
                "key": [f"{s:05d}{i:04d}" for i in range(per)], "url": urls,
                "page_url": [u.rsplit("/", 2)[0] for u in urls],
                "caption": pa.array(captions, pa.binary()),
            }),
            path,
        )  # fmt: skip
        uris.append(str(path))
    return uris


def shard_text_features(uri: str) -> str:
    """One shard's per-row text features, written beside it; returns the part's path."""
    table = pq.read_table(uri)
    decoded = [decode_caption(raw) for raw in table.column("caption").to_pylist()]
    norm = [normalise_caption(text) for text, _ in decoded]
    part = uri.removesuffix(".parquet") + ".part.parquet"
    pq.write_table(
        pa.table({
            "key": table.column("key"), "caption": [text for text, _ in decoded],
            "caption_invalid_utf8": [bad for _, bad in decoded], "caption_norm": norm,
            "caption_words": [len(n.split()) if n else 0 for n in norm],
            "url_host": [url_host(u) for u in table.column("url").to_pylist()],
            "page_host": [url_host(u) for u in table.column("page_url").to_pylist()],
        }),
        part,
    )  # fmt: skip
    return part


def tiny(item: int) -> int:
    return item


@flow(name="bench-scale")
def timed_map(execution: ExecutionConfig, fn: Callable[[Any], Any], items: list[Any]) -> float:
    """Seconds to map ``fn`` over ``items`` on ``execution``'s runner (a local cluster's
    start and stop included, as a stage run pays them)."""
    start = time.perf_counter()
    map_as_tasks("bench", execution, fn, items)
    return time.perf_counter() - start


def run(quick: bool, tiny_tasks: int) -> dict[str, Any]:
    rows, shards = (100_000, 20) if quick else (1_000_000, 100)
    runners = {"local": ExecutionConfig(), "dask": ExecutionConfig(runner="dask", workers=2)}
    seconds: dict[str, dict[str, float]] = {name: {} for name in runners}
    with tempfile.TemporaryDirectory(prefix="clipflow-bench-scale-") as tmp:
        uris = write_shards(Path(tmp), rows, shards)
        in_process = time.perf_counter()
        for uri in uris:
            shard_text_features(uri)
        plain = time.perf_counter() - in_process
        for name, execution in runners.items():
            seconds[name]["shards"] = timed_map(execution, shard_text_features, uris)
            seconds[name]["one_tiny"] = timed_map(execution, tiny, [0])
            seconds[name]["tiny"] = timed_map(execution, tiny, list(range(tiny_tasks)))
    overhead = {name: (s["tiny"] - s["one_tiny"]) / (tiny_tasks - 1) for name, s in seconds.items()}
    return {
        "rows": rows, "shards": shards, "tiny_tasks": tiny_tasks, "plain_loop_seconds": plain,
        "seconds": seconds, "overhead_per_task_seconds": overhead,
        "ratio_local_over_dask": seconds["local"]["shards"] / seconds["dask"]["shards"],
        "ratio_local_over_dask_started": seconds["local"]["shards"]
        / (seconds["dask"]["shards"] - seconds["dask"]["one_tiny"]),
        "cpus": os.cpu_count(), "machine": platform.machine(),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rows in 20 shards")
    parser.add_argument("--tiny-tasks", type=int, default=200, help="tasks that do nothing")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        result = run(args.quick, args.tiny_tasks)
    s, overhead = result["seconds"], result["overhead_per_task_seconds"]
    print(f"curate per-shard text features, {result['rows']:,} rows in {result['shards']} "
          f"mapped tasks (plain loop in one process: {result['plain_loop_seconds']:.1f} s)")  # fmt: skip
    print(f"{'runner':<34}{'shards s':>10}{'rows/s':>12}{'1 tiny task s':>15}{'per task ms':>13}")
    for name, label in (("local", "local (flow threads)"), ("dask", "dask (2 worker processes)")):
        print(f"{label:<34}{s[name]['shards']:>10.1f}{result['rows'] / s[name]['shards']:>12,.0f}"
              f"{s[name]['one_tiny']:>15.1f}{overhead[name] * 1000:>13.1f}")  # fmt: skip
    print(f"ratio local/dask wall time: {result['ratio_local_over_dask']:.2f}x "
          f"(dask's includes starting and stopping its cluster: see '1 tiny task s'); "
          f"overhead per task over {result['tiny_tasks']} tiny tasks")  # fmt: skip
    print(f"ratio local/dask without the cluster's start and stop: "
          f"{result['ratio_local_over_dask_started']:.2f}x")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
