"""img2dataset's ``pyspark`` and ``ray`` distributors on the hostile demo web: the same
samples and failure reasons as the multiprocessing pool, every candidate counted, and the
guarded fetch (SSRF guard, deadline, byte and pixel caps) applied inside the engine's workers.

An engine takes ~10-20 s to start here, so each distributor downloads once per module, and
that one download carries every check."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.storage import Storage
from tasks.download import stage as download_stage
from tasks.download.stage import download, shard_results
from tasks.stages import stage
from tests.download.loopback import LoopbackServer, png_bytes, send
from tests.download.test_download import EXPECTED_HOSTILE_REASON, fashion_urls, write_candidates

DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
GOOD_IMAGES = 8


def engine_config(root: Path, distributor: str, private_hosts: list[str]) -> PipelineConfig:
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
            # Loopback is private: only the demo web's own host:port is let through.
            "crawl": {"allow_private_networks": False, "allow_private_hosts": private_hosts},
            "download": download,
        }
    )


Run = tuple[StageResult, pd.DataFrame, float]


@pytest.fixture(scope="module")
def forbidden_server() -> Iterator[LoopbackServer]:
    """A server on loopback that no fetch may reach (its port is not exempt)."""
    server = LoopbackServer("127.0.0.1")
    server.routes["/a.png"] = lambda h: send(h, png_bytes())
    yield server
    server.close()


@pytest.fixture(scope="module")
def downloaded(demo_web, forbidden_server, tmp_path_factory) -> Callable[[str], Run]:
    """``downloaded(distributor)``: the download stage's result, rows by URL and wall time
    on every hostile image of the demo web, good images, and two URLs on the forbidden
    server; each distributor downloads once.

    The stage refuses private hosts before img2dataset runs; that check is switched off
    here, so only the policy pickled into the engine's workers stands between those URLs
    and the forbidden server."""
    hostile = demo_web.planted["hostile"]["images"]
    port = forbidden_server.port
    urls = [demo_web.abs(path) for path in hostile.values()] + fashion_urls(demo_web, GOOD_IMAGES)
    urls += [f"http://127.0.0.1:{port}/a.png", f"http://localhost:{port}/a.png"]
    demo_host = demo_web.url.removeprefix("http://")
    runs: dict[str, Run] = {}

    def nothing_refused(candidates: pd.DataFrame, policy: object) -> tuple[pd.DataFrame, ...]:
        return candidates, candidates.iloc[:0].assign(reason=[])

    def run(distributor: str) -> Run:
        if distributor not in runs:
            cfg = engine_config(tmp_path_factory.mktemp(distributor), distributor, [demo_host])
            storage = Storage(cfg.storage)
            write_candidates(storage, urls)
            started = time.monotonic()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(download_stage, "split_refused", nothing_refused)
                result = download(cfg, storage)
            elapsed = time.monotonic() - started
            print(f"\n{distributor}: {len(urls)} candidates downloaded in {elapsed:.1f} s")
            runs[distributor] = (result, shard_results(storage).set_index("url"), elapsed)
        return runs[distributor]

    return run


@pytest.mark.parametrize("distributor", DISTRIBUTORS)
def test_workers_refuse_private_addresses(downloaded, forbidden_server, distributor):
    result, rows, _ = downloaded(distributor)
    port = forbidden_server.port
    forbidden = [f"http://127.0.0.1:{port}/a.png", f"http://localhost:{port}/a.png"]
    assert rows.loc[forbidden, "reason"].tolist() == ["ssrf_refused"] * 2
    assert result.counts["failed_ssrf_refused"] == 2
    assert forbidden_server.requests == []


@pytest.mark.parametrize("distributor", [d for d in DISTRIBUTORS if d != "multiprocessing"])
def test_engine_downloads_what_the_pool_downloads(downloaded, demo_web, distributor):
    pool_result, pool_rows, _ = downloaded("multiprocessing")
    result, rows, _ = downloaded(distributor)

    stage("download").accounting[0].check("download", result.counts)
    assert result.counts == pool_result.counts
    assert result.counts["successes"] == GOOD_IMAGES
    assert result.outputs["shards"] == pool_result.outputs["shards"] > 1
    # The same reason for every URL (the deadline, the caps, the guard all held), and the
    # same samples under the same keys.
    assert rows["reason"].sort_index().equals(pool_rows["reason"].sort_index())
    for kind, path in demo_web.planted["hostile"]["images"].items():
        assert rows.loc[demo_web.abs(path), "reason"] == EXPECTED_HOSTILE_REASON[kind], kind
    assert rows.loc[rows["reason"] == "success", "key"].sort_values().tolist() == (
        pool_rows.loc[pool_rows["reason"] == "success", "key"].sort_values().tolist()
    )
