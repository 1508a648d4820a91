"""The one storage interface every stage uses: fsspec URIs under ``storage.root``.

Local paths and ``s3://bucket/prefix`` URIs behave the same. Reads go through fsspec;
writes are atomic: to a temporary name, then renamed (local), or uploaded with boto3 in one
checksummed PUT or a multipart upload (S3, where an object is visible only once complete;
see ``tasks/core/s3.py``). Credentials come from the environment / AWS config and are never
logged.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec

from tasks.core import s3
from tasks.core.config import StorageConfig

log = logging.getLogger(__name__)


class Storage:
    """Read and write objects under one root URI (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, config: StorageConfig, upload: s3.UploadPolicy | None = None) -> None:
        self.config = config
        self.upload = upload or s3.UploadPolicy()
        self.root = config.root.rstrip("/") if config.is_s3 else os.path.abspath(config.root)
        # Other processes (img2dataset workers, other stages) write here too: a cached listing
        # would hide their objects, so S3 listings are never cached.
        extra = {"use_listings_cache": False} if config.is_s3 else {}
        self.fs: fsspec.AbstractFileSystem = fsspec.filesystem(
            "s3" if config.is_s3 else "file", **self.storage_options(), **extra
        )
        self._client: Any = None

    def s3_client(self) -> Any:
        """The boto3 client that S3 writes go through (created on first use)."""
        if self._client is None:
            self._client = s3.make_client(self.config)
        return self._client

    def storage_options(self) -> dict[str, Any]:
        """fsspec keyword arguments for this root (also what webdataset / pandas take)."""
        if not self.config.is_s3:
            return {}
        client_kwargs: dict[str, Any] = {}
        if self.config.s3_endpoint_url:
            client_kwargs["endpoint_url"] = self.config.s3_endpoint_url
        if self.config.s3_region:
            client_kwargs["region_name"] = self.config.s3_region
        return {"client_kwargs": client_kwargs} if client_kwargs else {}

    @property
    def is_s3(self) -> bool:
        return self.config.is_s3

    def uri(self, *parts: str) -> str:
        """The URI of a path under the root: ``uri("curate", "samples.parquet")``."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(uri))

    def glob(self, pattern: str) -> list[str]:
        """Sorted URIs matching a glob under the root (pattern relative to the root)."""
        found = sorted(self.fs.glob(self.uri(pattern)))
        return [f"s3://{p}" if self.is_s3 and not p.startswith("s3://") else p for p in found]

    def open(self, uri: str, mode: str = "rb") -> IO[Any]:
        return self.fs.open(uri, mode)

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open(uri, "rb") as f:
            return f.read()

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri).decode("utf-8"))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write an object so that readers see either nothing or all of it."""
        if self.is_s3 and len(data) <= self.upload.chunk_bytes:
            s3.upload_bytes(self.s3_client(), data, uri, self.upload)
            return
        with self.atomic_local_path(uri) as (fh, _):
            fh.write(data)

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_file(self, local_path: str, uri: str) -> None:
        """Copy a finished local file to ``uri`` atomically."""
        if self.is_s3:
            s3.upload_file(self.s3_client(), local_path, uri, self.upload)
        else:
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            tmp = f"{uri}.tmp-{uuid.uuid4().hex}"
            with open(local_path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(8 * 1024 * 1024):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, uri)

    @contextmanager
    def atomic_local_path(self, uri: str) -> Iterator[tuple[IO[bytes], str]]:
        """Yield a binary file handle (and its local path) whose content lands at ``uri`` on
        success and nowhere on error."""
        if self.is_s3:
            with tempfile.NamedTemporaryFile(suffix=os.path.basename(uri)) as tmp:
                yield tmp, tmp.name
                tmp.flush()
                s3.upload_file(self.s3_client(), tmp.name, uri, self.upload)
            return
        os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
        tmp_path = f"{uri}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp_path, "wb") as fh:
                yield fh, tmp_path
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_path, uri)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)

    def remove(self, uri: str, recursive: bool = False) -> None:
        if self.exists(uri):
            self.fs.rm(uri, recursive=recursive)

    def size(self, uri: str) -> int:
        return int(self.fs.size(uri))
