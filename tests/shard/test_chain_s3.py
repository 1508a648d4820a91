"""crawl -> download -> curate -> shard with storage.root on moto_server: the whole data
chain through Prefect, every stage reading and writing S3, the shards exactly the kept rows."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pandas as pd

from flows.cli import main as clipflow
from flows.pipeline import pipeline_flow
from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.shard.verify import verify_shards


def test_crawl_to_shards_on_s3(
    prefect_harness, demo_web, s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    cfg = PipelineConfig.model_validate(
        {
            "storage": {
                "root": f"s3://{s3_bucket}/chain",
                "s3_endpoint_url": s3_server.endpoint_url,
            },
            "crawl": {
                "seeds": [demo_web.url + "/"],
                "allow_private_networks": True,
                "timeout": 1.0,
            },
            "download": {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 32},
            "shard": {"samples_per_shard": 40},
        }
    )
    stages = ["crawl", "download", "curate", "shard"]
    manifests = pipeline_flow(config=cfg.model_dump(mode="json"), stages=stages)
    assert all(manifests[s]["skipped"] is False for s in stages)
    assert manifests["download"]["counts"]["successes"] > 40, manifests["download"]["counts"]
    storage = Storage(cfg.storage)
    samples = pd.read_parquet(
        storage.uri("curate", "samples.parquet"), storage_options=storage.storage_options()
    )
    kept = sorted(samples.loc[samples["keep"], "key"])
    assert manifests["curate"]["counts"]["kept"] == len(kept) > 40
    assert manifests["shard"]["counts"] == {
        "kept": len(kept),
        "samples": len(kept),
        "shards": -(-len(kept) // 40),
    }
    keys = []
    for uri in storage.glob("shards/*.tar"):
        with storage.open(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            keys += [m.name.partition(".")[0] for m in tar if m.name.endswith(".txt")]
    assert sorted(keys) == kept
    assert verify_shards(storage).ok
    config_file = tmp_path / "chain.yaml"
    config_file.write_text(
        f"storage:\n  root: {cfg.storage.root}\n  s3_endpoint_url: {cfg.storage.s3_endpoint_url}\n"
    )
    assert clipflow(["verify", str(config_file)]) == 0
