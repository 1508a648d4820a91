"""The shard stage with storage.root on a real S3 API (moto_server on 127.0.0.1): exact
output, no credential anywhere, and the server killed in the middle of the upload."""

from __future__ import annotations

import logging
import os
import tarfile
import threading
from pathlib import Path

import pytest

from model.s3 import S3UploadError, make_client
from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.shard.stage import shard
from tasks.shard.verify import verify_shards
from tests.fixtures_s3 import MotoServer, free_port, upload_tree
from tests.shard.conftest import load_kept
from tests.storage.fault_proxy import FaultProxy

BUCKET = "fault-bucket"


def s3_config(root: str, endpoint_url: str, **shard_options: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "storage": {"root": root, "s3_endpoint_url": endpoint_url},
            "shard": {"samples_per_shard": 5, **shard_options},
        }
    )


def shard_keys(storage: Storage) -> list[str]:
    """Every sample key in every shard named by manifest.json, read back from S3."""
    keys = []
    for entry in storage.read_json(storage.uri("shards", "manifest.json"))["shards"]:
        with (
            storage.open(storage.uri("shards", entry["name"])) as f,
            tarfile.open(fileobj=f) as tar,
        ):
            keys += sorted({m.name.partition(".")[0] for m in tar.getmembers()})
    return keys


def test_shards_on_s3_are_exact_and_leak_no_credentials(
    s3_root: str, s3_server: MotoServer, shard_inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore's debug log shows every request it signs
    cfg = s3_config(s3_root, s3_server.endpoint_url, samples_per_shard=20)
    storage = Storage(cfg.storage)
    result = shard(cfg, storage)
    kept = sorted(load_kept(shard_inputs)["key"])
    assert sorted(shard_keys(storage)) == kept and result.counts["samples"] == len(kept)
    assert verify_shards(storage).ok
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    key_id = os.environ["AWS_ACCESS_KEY_ID"].encode()
    assert secret not in caplog.text.encode()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("tasks", "clipflow"))]
    assert not any(key_id.decode() in m for m in ours)
    client = make_client(cfg.storage.s3_endpoint_url)
    bucket = s3_root.removeprefix("s3://").split("/")[0]
    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert any(o["Key"].endswith("shards/manifest.json") for o in objects)
    for obj in objects:
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        assert secret not in body and key_id not in body, obj["Key"]


def snapshot(client) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing
    }


def restore(client, objects: dict[str, bytes]) -> None:
    client.create_bucket(Bucket=BUCKET)
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)


@pytest.fixture
def fault_server(s3_server: MotoServer, shard_inputs: Path):
    """A private moto_server holding the shard inputs (s3_server provides the credentials)."""
    server = MotoServer(port=free_port())
    server.start()
    make_client(server.endpoint_url).create_bucket(Bucket=BUCKET)
    upload_tree(shard_inputs, server.endpoint_url, BUCKET, "root")
    yield server
    server.stop()


def kill_at_third_shard(server: MotoServer, restart: bool) -> tuple[FaultProxy, dict]:
    """A proxy that, when the upload of shards/000002.tar starts, snapshots what the server
    durably holds, kills it, and (if ``restart``) brings it back with that data."""
    direct = make_client(server.endpoint_url)
    state: dict = {}

    def bring_back() -> None:
        server.start()
        restore(direct, state["objects"])
        proxy.down.clear()

    def on_match() -> None:
        state["objects"] = snapshot(direct)
        server.stop()
        if restart:
            threading.Thread(target=bring_back, daemon=True).start()

    pattern = rb"(PUT|POST) /" + BUCKET.encode() + rb"/root/shards/000002\.tar"
    proxy = FaultProxy(server.port, pattern, on_match)
    return proxy, state


def test_server_killed_mid_upload_fails_clearly_and_a_rerun_completes(
    fault_server: MotoServer, shard_inputs: Path
) -> None:
    proxy, state = kill_at_third_shard(fault_server, restart=False)
    cfg = s3_config(
        f"s3://{BUCKET}/root", proxy.endpoint_url, upload_retries=1, upload_backoff_seconds=0.05
    )
    with pytest.raises(S3UploadError, match=rf"s3://{BUCKET}/root/shards/000002\.tar") as error:
        shard(cfg, Storage(cfg.storage))
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(error.value)
    assert proxy.matched.is_set()
    done = sorted(k for k in state["objects"] if "/shards/" in k)
    assert done == [
        "root/shards/000000.tar",
        "root/shards/000001.tar",
        "root/shards/_progress/000000.tar.json",
        "root/shards/_progress/000001.tar.json",
    ]
    fault_server.start()
    restore(make_client(fault_server.endpoint_url), state["objects"])
    proxy.down.clear()
    storage = Storage(cfg.storage)
    result = shard(cfg, storage)
    assert result.extra["shards_reused"] == 2
    assert result.extra["shards_written"] == result.counts["shards"] - 2
    assert sorted(shard_keys(storage)) == sorted(load_kept(shard_inputs)["key"])
    assert verify_shards(storage).ok
    proxy.close()


def test_stage_retries_through_a_server_restart(
    fault_server: MotoServer, shard_inputs: Path
) -> None:
    proxy, _ = kill_at_third_shard(fault_server, restart=True)
    cfg = s3_config(
        f"s3://{BUCKET}/root", proxy.endpoint_url, upload_retries=8, upload_backoff_seconds=0.25
    )
    storage = Storage(cfg.storage)
    result = shard(cfg, storage)
    assert proxy.matched.is_set()
    assert result.extra["shards_written"] == result.counts["shards"]
    assert sorted(shard_keys(storage)) == sorted(load_kept(shard_inputs)["key"])
    assert verify_shards(storage).ok
    proxy.close()
