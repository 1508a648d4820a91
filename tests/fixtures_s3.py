"""A real S3 API (moto_server) on 127.0.0.1 for the test session, with credentials that
exist only here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    """A moto_server process that a test can kill and restart on the same port."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """moto_server on 127.0.0.1, with fake credentials in the environment for boto3/s3fs."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="clipflow-test-key",
        AWS_SECRET_ACCESS_KEY="clipflow-test-secret-do-not-log",
        AWS_DEFAULT_REGION="us-east-1",
    )
    server = MotoServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A fresh bucket on the session's moto_server; returns its name."""
    import boto3

    name = f"clipflow-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint_url).create_bucket(Bucket=name)
    return name


def upload_tree(local: Path, endpoint_url: str, bucket: str, prefix: str) -> None:
    """Copy a local folder into ``s3://bucket/prefix`` with plain boto3."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint_url)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
