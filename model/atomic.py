"""The one atomic writer: an object appears at its URI whole, or not at all.

Local paths are written to a temporary sibling (``{path}.tmp-{hex}``), fsync'd, then
``os.replace``'d over the target; on an error the temporary file is removed, and what a
killed process leaves behind carries ``TEMP_MARK`` for the owner of the folder to sweep.
``s3://`` objects go up in one SHA-256-checksummed PUT or a checksummed multipart upload
(``model.s3``): S3 shows an object only once it is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from model import s3

TEMP_MARK = ".tmp-"
"""In the name of every temporary file or folder this module writes beside its target."""
_COPY_CHUNK = 8 * 1024 * 1024


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local_path(uri: str) -> str:
    if "://" not in uri:
        return uri
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    raise ValueError(f"{uri}: only local paths and s3:// URIs can be written")


def _temp_sibling(path: str) -> str:
    return f"{path}{TEMP_MARK}{uuid.uuid4().hex}"


class AtomicWriter:
    """Atomic writes to local paths and ``s3://`` URIs; the S3 client is made on first use."""

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = None,
        policy: s3.UploadPolicy | None = None,
    ) -> None:
        self.endpoint_url, self.region = endpoint_url, region
        self.policy = policy or s3.UploadPolicy()
        self._client: Any = None

    @classmethod
    def for_options(cls, storage_options: Mapping[str, Any] | None) -> AtomicWriter:
        """The writer for fsspec storage options (their ``client_kwargs`` name the S3
        endpoint and region), as the training loop holds them."""
        client_kwargs = (storage_options or {}).get("client_kwargs", {})
        return cls(client_kwargs.get("endpoint_url"), client_kwargs.get("region_name"))

    def client(self) -> Any:
        """The boto3 client that S3 writes go through."""
        if self._client is None:
            self._client = s3.make_client(self.endpoint_url, self.region)
        return self._client

    @contextmanager
    def open(self, uri: str) -> Iterator[tuple[IO[bytes], str]]:
        """A binary file handle (and its local path) whose content lands at ``uri`` when the
        block ends without an error, and nowhere otherwise."""
        if is_s3(uri):
            with tempfile.NamedTemporaryFile(suffix=os.path.basename(uri)) as tmp:
                yield tmp, tmp.name
                tmp.flush()
                s3.upload_file(self.client(), tmp.name, uri, self.policy)
            return
        path = _local_path(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp_path = _temp_sibling(path)
        try:
            with open(tmp_path, "wb") as fh:
                yield fh, tmp_path
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)

    def write_bytes(self, data: bytes, uri: str) -> None:
        """Put ``data`` at ``uri``: readers see the old object or all of the new one."""
        if is_s3(uri) and len(data) <= self.policy.chunk_bytes:
            s3.upload_bytes(self.client(), data, uri, self.policy)
            return
        with self.open(uri) as (fh, _):
            fh.write(data)

    def write_file(self, local_path: str, uri: str) -> None:
        """Copy a finished local file to ``uri``."""
        if is_s3(uri):
            s3.upload_file(self.client(), local_path, uri, self.policy)
            return
        with open(local_path, "rb") as src, self.open(uri) as (dst, _):
            shutil.copyfileobj(src, dst, _COPY_CHUNK)

    def copy(self, source: str, target: str) -> None:
        """Make ``target`` a copy of ``source`` on the same store: a hard link renamed into
        place locally, a server-side copy on S3 (no bytes travel)."""
        if is_s3(target):
            bucket, key = s3.split_uri(source)
            target_bucket, target_key = s3.split_uri(target)
            self.client().copy({"Bucket": bucket, "Key": key}, target_bucket, target_key)
            return
        path = _local_path(target)
        tmp_path = _temp_sibling(path)
        os.link(_local_path(source), tmp_path)
        os.replace(tmp_path, path)


def write_atomic(data: bytes, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """``AtomicWriter.write_bytes`` for a caller holding fsspec storage options."""
    AtomicWriter.for_options(storage_options).write_bytes(data, uri)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """An empty temporary sibling folder to fill; on success it replaces ``path`` by a rename,
    so a reader never sees a half-filled folder. The sibling has a fixed name: what a killed
    build left there is cleared by the next."""
    tmp = path.with_name(f"{path.name}{TEMP_MARK}build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
