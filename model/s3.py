"""S3 writes through boto3: checksummed single PUTs and multipart uploads, with retries.

An object becomes visible only when its PUT or ``CompleteMultipartUpload`` succeeds, so a
reader never sees a partial object. Every PUT and part carries a SHA-256 checksum that the
server checks, and the checksum S3 reports back for the whole object is compared with the
one computed here. Credentials come only from boto3's default chain (environment, shared
AWS config, instance role); nothing here reads, stores or logs them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3 error codes after which the same request may succeed later; anything else is final.
_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "NoSuchUpload",
        "500",
        "502",
        "503",
        "504",
    }
)


class S3UploadError(RuntimeError):
    """An upload that failed after its retries; the message names the object URI."""


@dataclass(frozen=True)
class UploadPolicy:
    """How large objects are uploaded: part size, parallel parts, object-level retries."""

    chunk_bytes: int = 8 * 1024 * 1024
    concurrency: int = 4
    retries: int = 5
    backoff_seconds: float = 0.5
    """First retry waits this long; each further retry waits twice as long as the last."""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"S3 URI needs a bucket and a key: {uri!r}")
    return bucket, key


def make_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client for an endpoint (None: AWS) and region; credentials from boto3's
    chain.

    botocore retries each call a few times on transient errors; ``upload_file`` adds retries
    of the whole object on top, for outages longer than a few hundred milliseconds.
    """
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=32,
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _is_retryable(error: Exception) -> bool:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in _RETRYABLE_CODES or status.startswith("5")
    return isinstance(error, BotoCoreError | ConnectionError | TimeoutError)


def with_retries(action: Callable[[], T], what: str, policy: UploadPolicy) -> T:
    """Run ``action``; on a retryable error wait (exponential backoff) and run it again.

    Raises S3UploadError naming ``what`` once ``policy.retries`` retries are spent, or at
    once on an error that retrying cannot fix (no such bucket, access denied).
    """
    for attempt in range(policy.retries + 1):
        try:
            return action()
        except (ClientError, BotoCoreError, OSError) as error:
            if not _is_retryable(error):
                raise S3UploadError(f"{what}: {error}") from error
            if attempt == policy.retries:
                raise S3UploadError(
                    f"{what}: failed after {policy.retries + 1} attempts: {error}"
                ) from error
            delay = policy.backoff_seconds * 2**attempt
            log.warning(
                "%s: attempt %d failed (%s); retrying in %.1fs",
                what,
                attempt + 1,
                type(error).__name__,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def upload_file(client: Any, local_path: str, uri: str, policy: UploadPolicy) -> str:
    """Upload a local file to ``uri`` atomically; return its hex SHA-256.

    Files up to ``policy.chunk_bytes`` go in one PUT, larger ones as a multipart upload of
    ``chunk_bytes`` parts sent ``policy.concurrency`` at a time.
    """
    bucket, key = split_uri(uri)
    size = os.path.getsize(local_path)
    if size <= policy.chunk_bytes:
        with open(local_path, "rb") as f:
            data = f.read()
        return with_retries(lambda: _put(client, bucket, key, data), f"upload {uri}", policy)
    return with_retries(
        lambda: _multipart(client, bucket, key, local_path, size, policy), f"upload {uri}", policy
    )


def upload_bytes(client: Any, data: bytes, uri: str, policy: UploadPolicy) -> str:
    """Upload a small object in one checksummed PUT; return its hex SHA-256."""
    bucket, key = split_uri(uri)
    return with_retries(lambda: _put(client, bucket, key, data), f"upload {uri}", policy)


def _put(client: Any, bucket: str, key: str, data: bytes) -> str:
    digest = hashlib.sha256(data)
    expected = base64.b64encode(digest.digest()).decode("ascii")
    response = client.put_object(
        Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=expected
    )
    _check_checksum(response.get("ChecksumSHA256"), expected, bucket, key)
    return digest.hexdigest()


def _multipart(
    client: Any, bucket: str, key: str, local_path: str, size: int, policy: UploadPolicy
) -> str:
    """One multipart upload attempt; aborted (so no parts linger) if anything fails."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")[
        "UploadId"
    ]
    offsets = list(range(0, size, policy.chunk_bytes))
    whole = hashlib.sha256()
    try:
        with ThreadPoolExecutor(max_workers=policy.concurrency) as pool:
            futures = [
                pool.submit(
                    _upload_part,
                    client,
                    bucket,
                    key,
                    upload_id,
                    local_path,
                    n,
                    offset,
                    policy.chunk_bytes,
                )
                for n, offset in enumerate(offsets, start=1)
            ]
            # Hash the whole file while the parts are in flight (hashlib releases the GIL).
            with open(local_path, "rb") as f:
                while chunk := f.read(policy.chunk_bytes):
                    whole.update(chunk)
            parts = [f.result() for f in futures]
        part_digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)
        expected = f"{_b64_digest(part_digests)}-{len(parts)}"
        response = client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        _abort_quietly(client, bucket, key, upload_id)
        raise
    reported = response.get("ChecksumSHA256")
    if reported is None:  # some servers (moto) report it only on HEAD
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        reported = head.get("ChecksumSHA256")
    _check_checksum(reported, expected, bucket, key)
    return whole.hexdigest()


def _b64_digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _upload_part(
    client: Any,
    bucket: str,
    key: str,
    upload_id: str,
    local_path: str,
    number: int,
    offset: int,
    length: int,
) -> dict[str, Any]:
    with open(local_path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    checksum = _b64_sha256(data)
    response = client.upload_part(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=number,
        Body=data,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=checksum,
    )
    return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}


def _abort_quietly(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort a failed multipart upload; if the server is unreachable, its lifecycle rules
    (or the next successful upload of the key) clean up, so this must not mask the error."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError, OSError) as error:
        log.warning("s3://%s/%s: could not abort upload (%s)", bucket, key, type(error).__name__)


def _check_checksum(reported: str | None, expected: str, bucket: str, key: str) -> None:
    """The server's checksum of the stored object must equal ours (None: not reported).

    A multipart checksum is the SHA-256 of the parts' SHA-256s, suffixed ``-<parts>`` by
    AWS and unsuffixed by some other servers: the digests are compared.
    """
    if reported is not None and reported.split("-")[0] != expected.split("-")[0]:
        raise S3UploadError(
            f"s3://{bucket}/{key}: server reports checksum {reported}, expected {expected}"
        )
