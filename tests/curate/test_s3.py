"""The curate stage with its storage root on S3 (moto_server on 127.0.0.1): shards read,
parts, samples.parquet and the report written through the same Storage interface."""

from __future__ import annotations

import io

import pandas as pd

from tasks.core.config import load_config
from tasks.core.storage import Storage
from tasks.curate.stage import curate
from tests.curate.conftest import DownloadedWeb
from tests.curate.webdata import BLOCKED_DOMAIN


def test_curate_on_s3_root(s3_server, s3_bucket, downloaded_web: DownloadedWeb):
    cfg = load_config(
        {
            "storage": {"root": f"s3://{s3_bucket}/run", "s3_endpoint_url": s3_server.endpoint_url},
            "curate": {"url_blocklist": [BLOCKED_DOMAIN]},
            "evaluate": {"datasets": [{"name": "fmnist", "path": str(downloaded_web.eval_dir)}]},
        }
    )
    storage = Storage(cfg.storage)
    for path in downloaded_web.download_dir.iterdir():
        storage.write_file(str(path), storage.uri("download", path.name))
    result = curate(cfg, storage)
    samples = pd.read_parquet(io.BytesIO(storage.read_bytes(result.outputs["samples"])))
    summary = storage.read_json(storage.uri("curate", "report", "summary.json"))
    assert len(samples) == summary["input"] == result.counts["input"]
    assert summary["kept"] + sum(summary["dropped_by_reason"].values()) == summary["input"]
    assert summary["eval_contaminated"] == len(downloaded_web.planted.eval_copies)
    for name in ("funnel.png", "data_docs/index.html"):
        assert storage.exists(storage.uri("curate", "report", name)), name
    assert result.outputs["report"]["data_docs"].startswith(f"s3://{s3_bucket}/run/curate/")
