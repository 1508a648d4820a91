"""The storage interface on local disk and on a real S3 API (moto_server on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import pytest

from model.s3 import S3UploadError, UploadPolicy, make_client, upload_file
from tasks.core.config import StorageConfig
from tasks.core.storage import Storage
from tests.fixtures_s3 import MotoServer, free_port
from tests.storage.fault_proxy import FaultProxy


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(StorageConfig(root=str(tmp_path / "root")))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    config = StorageConfig(root=f"s3://{bucket}/root", s3_endpoint_url=server.endpoint_url)
    return Storage(config, upload=UploadPolicy(chunk_bytes=5 * 1024 * 1024))


def test_the_interface_round_trips(storage: Storage, tmp_path: Path) -> None:
    uri = storage.uri("a", "b.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"x": [1, 2]})
    assert storage.exists(uri) and storage.read_json(uri) == {"x": [1, 2]}
    storage.write_bytes(storage.uri("a", "c.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.uri("a", "c.bin")) == b"\x00\x01"
    assert storage.size(storage.uri("a", "c.bin")) == 2
    assert storage.glob("a/*") == [storage.uri("a", "b.json"), storage.uri("a", "c.bin")]
    with storage.open(uri) as f:
        assert f.read(1) == b"{"
    storage.remove(storage.uri("a"), recursive=True)
    assert storage.glob("a/*") == [] and not storage.exists(uri)


def test_a_failed_write_leaves_nothing(storage: Storage) -> None:
    uri = storage.uri("out", "half.tar")
    with (
        pytest.raises(RuntimeError, match="writer died"),
        storage.atomic_local_path(uri) as (fh, _),
    ):
        fh.write(b"x" * 1000)
        raise RuntimeError("writer died")
    assert not storage.exists(uri) and storage.glob("out/*") == []


def test_large_files_go_up_in_checksummed_parts(storage: Storage, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(11 * 1024 * 1024 + 17))
    uri = storage.uri("big", "big.bin")
    storage.write_file(str(local), uri)
    assert storage.read_bytes(uri) == local.read_bytes()
    if storage.is_s3:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        head = storage.s3_client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        parts = [
            local.read_bytes()[i : i + 5 * 2**20] for i in range(0, 11 * 2**20 + 17, 5 * 2**20)
        ]
        assert len(parts) == 3  # each part carried its own SHA-256
        combined = b"".join(hashlib.sha256(p).digest() for p in parts)
        composite = base64.b64encode(hashlib.sha256(combined).digest()).decode()
        assert head["ChecksumSHA256"].split("-")[0] == composite


@pytest.fixture
def private_server(s3_server: MotoServer):
    """A moto_server of this test's own, free to kill (credentials from s3_server's env)."""
    server = MotoServer(port=free_port())
    server.start()
    yield server
    server.stop()


def test_a_multipart_upload_that_fails_mid_way_is_aborted_and_leaves_no_object(
    private_server: MotoServer, tmp_path: Path
) -> None:
    """Part 1 of 3 is stored, then part 2 never gets through (a proxy drops it on every
    try) while the server keeps its state: each attempt is aborted, so neither an object nor
    an unfinished upload with its stored parts is left; with the fault gone, a rerun lands."""
    client = make_client(private_server.endpoint_url)
    client.create_bucket(Bucket="multipart-bucket")
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(11 * 1024 * 1024 + 17))
    proxy = FaultProxy(
        private_server.port, rb"PUT /multipart-bucket/big\.bin\?[^ ]*partNumber=2\b", every=True
    )
    policy = UploadPolicy(chunk_bytes=5 * 1024 * 1024, concurrency=1, retries=1,
                          backoff_seconds=0.05)  # fmt: skip
    try:
        with pytest.raises(
            S3UploadError, match=r"upload s3://multipart-bucket/big\.bin: failed after 2"
        ):
            upload_file(
                make_client(proxy.endpoint_url), str(local), "s3://multipart-bucket/big.bin", policy
            )
    finally:
        proxy.close()
    assert proxy.dropped >= 2  # each attempt reached part 2 (botocore retries it, too)
    assert "Contents" not in client.list_objects_v2(Bucket="multipart-bucket")
    assert client.list_multipart_uploads(Bucket="multipart-bucket").get("Uploads", []) == []
    digest = upload_file(client, str(local), "s3://multipart-bucket/big.bin", policy)
    assert digest == hashlib.sha256(local.read_bytes()).hexdigest()
    assert (
        client.get_object(Bucket="multipart-bucket", Key="big.bin")["Body"].read()
        == local.read_bytes()
    )


def test_upload_retries_with_backoff_until_the_server_is_back(
    private_server: MotoServer, tmp_path: Path
) -> None:
    config = StorageConfig(root="s3://retry-bucket/", s3_endpoint_url=private_server.endpoint_url)
    client = make_client(config.s3_endpoint_url)
    client.create_bucket(Bucket="retry-bucket")
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(6 * 1024 * 1024))
    private_server.stop()
    policy = UploadPolicy(chunk_bytes=5 * 1024 * 1024, retries=2, backoff_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(
        S3UploadError, match=r"upload s3://retry-bucket/f\.bin: failed after 3 attempts"
    ):
        upload_file(client, str(local), "s3://retry-bucket/f.bin", policy)
    assert time.monotonic() - started >= 0.2 + 0.4
    private_server.start()  # a fresh server: the bucket is gone, and that is not retried
    with pytest.raises(S3UploadError, match="NoSuchBucket"):
        upload_file(client, str(local), "s3://retry-bucket/f.bin", policy)
    client.create_bucket(Bucket="retry-bucket")
    digest = upload_file(client, str(local), "s3://retry-bucket/f.bin", policy)
    assert digest == hashlib.sha256(local.read_bytes()).hexdigest()
    body = client.get_object(Bucket="retry-bucket", Key="f.bin")["Body"].read()
    assert body == local.read_bytes()
