"""The one storage interface every stage uses: fsspec URIs under ``storage.root``.

Local paths and ``s3://bucket/prefix`` URIs behave the same. Reads go through fsspec;
writes go through the one atomic writer, ``model.atomic``: to a temporary name, then renamed
(local), or uploaded with boto3 in one checksummed PUT or a multipart upload (S3, where an
object is visible only once complete). Credentials come from the environment / AWS config
and are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from contextlib import AbstractContextManager
from typing import IO, Any

import fsspec

from model.atomic import AtomicWriter
from model.s3 import UploadPolicy
from tasks.core.config import StorageConfig

log = logging.getLogger(__name__)


class Storage:
    """Read and write objects under one root URI (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, config: StorageConfig, upload: UploadPolicy | None = None) -> None:
        self.config = config
        self.upload = upload or UploadPolicy()
        self._writer = AtomicWriter(config.s3_endpoint_url, config.s3_region, self.upload)
        self.root = config.root.rstrip("/") if config.is_s3 else os.path.abspath(config.root)
        # Other processes (img2dataset workers, other stages) write here too: a cached listing
        # would hide their objects, so S3 listings are never cached.
        extra = {"use_listings_cache": False} if config.is_s3 else {}
        self.fs: fsspec.AbstractFileSystem = fsspec.filesystem(
            "s3" if config.is_s3 else "file", **self.storage_options(), **extra
        )

    def s3_client(self) -> Any:
        """The boto3 client that S3 writes go through (created on first use)."""
        return self._writer.client()

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
        self._writer.write_bytes(data, uri)

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_file(self, local_path: str, uri: str) -> None:
        """Copy a finished local file to ``uri`` atomically."""
        self._writer.write_file(local_path, uri)

    def atomic_local_path(self, uri: str) -> AbstractContextManager[tuple[IO[bytes], str]]:
        """A binary file handle (and its local path) whose content lands at ``uri`` on
        success and nowhere on error."""
        return self._writer.open(uri)

    def remove(self, uri: str, recursive: bool = False) -> None:
        if self.exists(uri):
            self.fs.rm(uri, recursive=recursive)

    def size(self, uri: str) -> int:
        return int(self.fs.size(uri))
