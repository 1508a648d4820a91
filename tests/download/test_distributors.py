"""img2dataset's ``pyspark`` and ``ray`` distributors on the hostile demo web: the same
samples and failure reasons as the multiprocessing pool, every candidate counted, and the
guarded fetch (SSRF guard, deadline, byte and pixel caps) applied inside the engine's workers.

Each engine is started once per download (~10-20 s here), so each test downloads once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.storage import Storage
from tasks.download.stage import download, run_img2dataset, shard_results
from tasks.stages import stage
from tests.download.loopback import LoopbackServer, png_bytes, send
from tests.download.test_download import EXPECTED_HOSTILE_REASON, fashion_urls, write_candidates

pytest.importorskip("pyspark")

ENGINES = ("pyspark", "ray")
GOOD_IMAGES = 12


def engine_config(root: Path, distributor: str, **crawl) -> PipelineConfig:
    download = {
        "distributor": distributor,
        "processes_count": 2,
        "thread_count": 16,
        "timeout": 3,
        "image_size": 32,
        "number_sample_per_shard": 8,  # several shards: several engine tasks
    }
    return PipelineConfig.model_validate(
        {
            "storage": {"root": str(root)},
            "crawl": {"allow_private_networks": True, **crawl},
            "download": download,
        }
    )


Run = tuple[StageResult, pd.DataFrame, float]


@pytest.fixture(scope="module")
def hostile_run(demo_web, tmp_path_factory) -> Callable[[str], Run]:
    """``run(distributor)``: the download stage on every hostile image of the demo web, a
    dead host and some good images; its result, its rows by URL and its wall time (each
    distributor downloads once per module)."""
    hostile = demo_web.planted["hostile"]["images"]
    urls = [demo_web.abs(path) for path in hostile.values()]
    urls += fashion_urls(demo_web, GOOD_IMAGES) + ["http://127.0.0.1:9/unreachable.png"]
    runs: dict[str, Run] = {}

    def run(distributor: str) -> Run:
        if distributor not in runs:
            cfg = engine_config(tmp_path_factory.mktemp(distributor), distributor)
            storage = Storage(cfg.storage)
            write_candidates(storage, urls)
            started = time.monotonic()
            result = download(cfg, storage)
            elapsed = time.monotonic() - started
            runs[distributor] = (result, shard_results(storage).set_index("url"), elapsed)
        return runs[distributor]

    return run


@pytest.mark.parametrize("distributor", ENGINES)
def test_engine_downloads_what_the_pool_downloads(hostile_run, demo_web, distributor):
    pool_result, pool_rows, _ = hostile_run("multiprocessing")
    result, rows, elapsed = hostile_run(distributor)

    assert result.counts == pool_result.counts
    stage("download").accounting[0].check("download", result.counts)
    assert result.counts["successes"] == GOOD_IMAGES
    assert result.outputs["shards"] == pool_result.outputs["shards"] > 1
    # Same reason for every URL, and the same bytes for every sample (same keys too).
    assert rows["reason"].sort_index().equals(pool_rows["reason"].sort_index())
    for kind, path in demo_web.planted["hostile"]["images"].items():
        assert rows.loc[demo_web.abs(path), "reason"] == EXPECTED_HOSTILE_REASON[kind], kind
    assert rows.loc[rows["reason"] == "success", "key"].sort_values().tolist() == (
        pool_rows.loc[pool_rows["reason"] == "success", "key"].sort_values().tolist()
    )
    print(
        f"{distributor}: {elapsed:.1f} s, multiprocessing {hostile_run('multiprocessing')[2]:.1f} s"
    )


@pytest.mark.parametrize("distributor", ENGINES)
def test_engine_workers_refuse_private_addresses(tmp_root, distributor):
    """The stage refuses private hosts before img2dataset runs; here img2dataset gets them
    anyway, so only the policy pickled into the engine's workers stands between them and the
    server, which must see no request."""
    server = LoopbackServer("127.0.0.1")
    server.routes["/a.png"] = lambda h: send(h, png_bytes())
    try:
        cfg = engine_config(tmp_root, distributor, allow_private_networks=False)
        storage = Storage(cfg.storage)
        urls = [f"http://127.0.0.1:{server.port}/a.png", f"http://localhost:{server.port}/a.png"]
        list_uri = storage.uri("download", "_input", "candidates.parquet")
        frame = pd.DataFrame({"url": urls, "caption": ["a", "b"], "page_url": "", "source": ""})
        storage.write_bytes(list_uri, frame.to_parquet())

        run_img2dataset(cfg, storage, list_uri)

        rows = shard_results(storage)
        assert sorted(rows["url"]) == sorted(urls)
        assert set(rows["reason"]) == {"ssrf_refused"}
        assert server.requests == []
    finally:
        server.close()
