"""shard: the curated samples as training WebDataset shards under ``{root}/shards/``.

The kept rows of ``curate/samples.parquet``, in the order of their images' sha256 (so the
shards do not depend on the crawl's order), are shuffled (seeded) and cut into shards of
``shard.samples_per_shard``: ``000000.tar, ...``, each sample ``{key}.jpg`` (the image bytes
exactly as downloaded, with the download's extension), ``{key}.txt`` (caption) and
``{key}.json`` (key, url, page_url, source, scores, ``image_sha256``: the sha256 of the image
member, and img2dataset's ``sha256`` of the fetched file). ``sizes.json`` (OpenCLIP's format)
and ``manifest.json`` (count, bytes, sha256 per shard; the curate manifest it came from) are
written after every shard, so neither ever names a missing shard.

Every image is checked against the ``image_sha256`` curate recorded before its sample is
written: a download that changed after curate ran (img2dataset keys are positional) is
refused, naming the sample, rather than pairing a caption with another URL's image.

Each shard is written atomically and checked (its sha256, read back locally or confirmed
by the S3 server's checksum), then a record ``shards/_progress/NNNNNN.json`` marks it done:
a rerun after a crash keeps every shard whose record matches what it would write now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np
import pandas as pd

from model.atomic import TEMP_MARK
from model.s3 import UploadPolicy
from model.tario import IndexedTar, SampleWriter, TarReadError, image_extension
from tasks.core.config import PipelineConfig, ShardConfig
from tasks.core.manifest import StageResult, invalidate, manifest_uri, read_manifest
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage
from tasks.shard.verify import verify_shards

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bumped when the bytes of a shard would change for the same input (resets resume)."""
REQUIRED_COLUMNS = (
    "key", "url", "caption", "page_url", "source", "download_shard", "image_sha256", "keep"
)  # fmt: skip
_READ_CHUNK = 1024 * 1024


class ShardInputError(ValueError):
    """The curate output cannot be sharded as it is; the message names the file and sample."""


class ShardVerifyError(RuntimeError):
    """Shards that do not match their manifest; the message names each bad shard."""


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard, as listed in ``manifest.json`` and its progress record."""

    name: str
    count: int
    bytes: int
    sha256: str
    fingerprint: str


def upload_policy(config: ShardConfig) -> UploadPolicy:
    return UploadPolicy(
        chunk_bytes=config.multipart_chunk_bytes,
        concurrency=config.upload_concurrency,
        retries=config.upload_retries,
        backoff_seconds=config.upload_backoff_seconds,
    )


def read_kept(storage: Storage, kept_expected: int) -> pd.DataFrame:
    """The rows of ``curate/samples.parquet`` with ``keep``, in content order (image sha256,
    then caption, then key); checked against the curate manifest's ``kept`` count and for
    duplicate keys. Keys number the download's input rows, ordered by a hash of (url,
    caption), and a URL holds the web server's host and port; ordering by the images' bytes
    instead makes two runs over the same kept samples write the same shards in the same order
    (and so train alike). Kept samples that share an image differ in their caption (curate
    drops a repeated image and caption), so the key is a last resort they do not reach."""
    uri = storage.uri("curate", "samples.parquet")
    if not storage.exists(uri):
        raise ShardInputError(f"{uri}: not found; run the curate stage first")
    samples = pd.read_parquet(uri, storage_options=storage.storage_options())
    missing = [c for c in REQUIRED_COLUMNS if c not in samples.columns]
    if missing:
        raise ShardInputError(f"{uri}: missing column(s) {missing}")
    kept = samples[samples["keep"].astype(bool)]
    kept = kept.sort_values(["image_sha256", "caption", "key"], kind="stable", na_position="last")
    kept = kept.reset_index(drop=True)
    if kept.empty:
        raise ShardInputError(f"{uri}: no rows with keep=true; nothing to train on")
    if len(kept) != kept_expected:
        raise ShardInputError(
            f"{uri}: {len(kept)} rows with keep=true, but the curate manifest says kept="
            f"{kept_expected}; rerun curate"
        )
    duplicated = kept["key"][kept["key"].duplicated()].tolist()
    if duplicated:
        raise ShardInputError(f"{uri}: kept keys appear more than once: {duplicated[:5]}")
    null_caption = kept["key"][kept["caption"].isna()].tolist()
    if null_caption:
        raise ShardInputError(f"{uri}: kept samples without a caption: {null_caption[:5]}")
    unhashed = kept["key"][kept["image_sha256"].isna()].tolist()
    if unhashed:
        raise ShardInputError(
            f"{uri}: kept samples without a sha256 of their image (image_sha256), so their "
            f"bytes cannot be checked: {unhashed[:5]}; rerun curate"
        )
    return kept


def plan_shards(n_samples: int, samples_per_shard: int, seed: int) -> list[np.ndarray]:
    """Row indices of each output shard: a seeded permutation cut into consecutive runs."""
    order = np.random.default_rng(seed).permutation(n_samples)
    return [order[i : i + samples_per_shard] for i in range(0, n_samples, samples_per_shard)]


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


def _score_columns(frame: pd.DataFrame) -> list[str]:
    return [
        c for c in frame.columns if c.endswith("score") and pd.api.types.is_numeric_dtype(frame[c])
    ]


def _present(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def sample_metadata(row: dict[str, Any], score_columns: list[str]) -> dict[str, Any]:
    """The ``.json`` member of one sample: lineage back to its URL and page, and its scores."""
    scores = {c: _present(None if row[c] is None else float(row[c])) for c in score_columns}
    meta: dict[str, Any] = {
        "key": str(row["key"]),
        "url": row["url"],
        "page_url": _present(row["page_url"]),
        "source": _present(row["source"]),
        "scores": scores,
        "image_sha256": row["image_sha256"],
    }
    if isinstance(row.get("sha256"), str):
        meta["sha256"] = row["sha256"]
    return meta


def _fingerprint(name: str, rows: pd.DataFrame, metas: list[dict[str, Any]]) -> str:
    """What a shard's bytes depend on: its name, samples in order, captions and inputs."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}:{name}".encode())
    for meta, caption, source_tar in zip(
        metas, rows["caption"], rows["download_shard"], strict=True
    ):
        h.update(json.dumps([meta, caption, source_tar], sort_keys=True).encode())
    return h.hexdigest()


class InputTars:
    """The download tars' images, by sample, each checked against its recorded sha256.

    Tars are opened once (``IndexedTar``: headers read, every member name checked); S3 tars
    are fetched once to a temporary folder.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._tmp = tempfile.TemporaryDirectory(prefix="clipflow-shard-")
        self._tars: dict[str, IndexedTar] = {}

    def __enter__(self) -> InputTars:
        return self

    def __exit__(self, *exc: object) -> None:
        for tar in self._tars.values():
            tar.close()
        self._tmp.cleanup()

    def image(self, download_shard: str, meta: dict[str, Any]) -> tuple[str, bytes]:
        """(extension, bytes) of a sample's image exactly as downloaded; raises
        ShardInputError unless they hash to ``meta["image_sha256"]``."""
        tar, key = self._open(download_shard), meta["key"]
        ext = image_extension(tar.index.get(key, {}))
        if ext is None:
            raise ShardInputError(f"{tar.uri}: kept sample {key!r} has no image in this tar")
        try:
            data = tar.read(key, ext)
        except TarReadError as error:
            raise ShardInputError(str(error)) from error
        found = hashlib.sha256(data).hexdigest()
        if found != meta["image_sha256"]:
            raise ShardInputError(
                f"{tar.uri}: sample {key!r} ({meta['url']}): its image {key}.{ext} has sha256 "
                f"{found}, curate recorded {meta['image_sha256']}: the download changed after "
                "curate ran; rerun curate, then shard"
            )
        return ext, data

    def _open(self, download_shard: str) -> IndexedTar:
        if download_shard not in self._tars:
            uri = self.storage.uri("download", download_shard)
            if posixpath.basename(download_shard) != download_shard or download_shard in {"", ".."}:
                raise ShardInputError(f"download_shard {download_shard!r}: not a plain file name")
            if not self.storage.exists(uri):
                raise ShardInputError(f"{uri}: download tar not found")
            path = uri
            if self.storage.is_s3:
                path = os.path.join(self._tmp.name, download_shard)
                self.storage.fs.get_file(uri, path)
            try:
                self._tars[download_shard] = IndexedTar(path, uri)
            except TarReadError as error:
                raise ShardInputError(str(error)) from error
        return self._tars[download_shard]


def write_shard_tar(
    target: IO[bytes], rows: pd.DataFrame, metas: list[dict[str, Any]], inputs: InputTars
) -> tuple[int, str]:
    """Write one shard's samples, in row order, as a tar to ``target``; (bytes, sha256).
    An image is checked before its sample is written (``InputTars.image``)."""
    with SampleWriter(target) as tar:
        for meta, caption, source_tar in zip(
            metas, rows["caption"], rows["download_shard"], strict=True
        ):
            ext, image = inputs.image(source_tar, meta)
            members = {
                ext: image,
                "txt": str(caption).encode("utf-8"),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
            tar.write(meta["key"], members)
    return tar.bytes, tar.sha256


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _reusable(
    storage: Storage, uri: str, progress_uri: str, fingerprint: str
) -> ShardRecord | None:
    """The record of a shard a previous run finished with the same content, if any."""
    if not storage.exists(progress_uri):
        return None
    try:
        record = ShardRecord(**storage.read_json(progress_uri))
    except (ValueError, TypeError):  # a record from an older format: rewrite the shard
        return None
    if record.fingerprint != fingerprint or not storage.exists(uri):
        return None
    return record if storage.size(uri) == record.bytes else None


def write_or_reuse_shard(
    storage: Storage, index: int, rows: pd.DataFrame, inputs: InputTars
) -> tuple[ShardRecord, bool]:
    """Write shard ``index`` (atomically, checked) unless a matching one is done; (record,
    written)."""
    name = shard_name(index)
    uri, progress_uri = (
        storage.uri("shards", name),
        storage.uri("shards", "_progress", f"{name}.json"),
    )
    scores = _score_columns(rows)
    metas = [sample_metadata(row, scores) for row in rows.to_dict("records")]
    fingerprint = _fingerprint(name, rows, metas)
    done = _reusable(storage, uri, progress_uri, fingerprint)
    if done is not None:
        log.debug("shard %s: kept from a previous run", name)
        return done, False
    storage.remove(progress_uri)
    with storage.atomic_local_path(uri) as (fh, local_path):
        size, sha256 = write_shard_tar(fh, rows, metas, inputs)
        fh.flush()
        if _file_sha256(local_path) != sha256:
            raise OSError(f"{uri}: local copy does not read back as written")
    # Local: os.replace of the checked file; S3: the server checked every part's SHA-256.
    record = ShardRecord(name, len(rows), size, sha256, fingerprint)
    storage.write_json(progress_uri, asdict(record))
    return record, True


def _retract_published(storage: Storage) -> None:
    """Before any shard changes, unpublish: no manifest may point at a shard being rewritten.
    (The runner already swept the temporary files of a killed run; this is also called by
    ``shard`` outside the runner, as the tests and benchmarks do.)"""
    invalidate(storage, "shard")
    for name in ("manifest.json", "sizes.json"):
        storage.remove(storage.uri("shards", name))
    for leftover in storage.glob(f"shards/*{TEMP_MARK}*"):
        storage.remove(leftover)


def _remove_stale(storage: Storage, names: set[str]) -> None:
    """Shards (and records) of an earlier, larger plan that this plan does not have."""
    for uri in storage.glob("shards/*.tar") + storage.glob("shards/_progress/*.tar.json"):
        if posixpath.basename(uri).removesuffix(".json") not in names:
            log.info("removing stale %s", uri)
            storage.remove(uri)


def shard(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The shard stage: kept samples in, verified WebDataset shards out, none lost or doubled."""
    curate = read_manifest(storage, "curate")
    if curate is None:
        raise ShardInputError(f"{manifest_uri(storage, 'curate')}: not found; run curate first")
    out = Storage(cfg.storage, upload=upload_policy(cfg.shard))
    kept = read_kept(storage, int(curate["counts"]["kept"]))
    plan = plan_shards(len(kept), cfg.shard.samples_per_shard, cfg.shard.seed)
    _retract_published(out)
    records: list[ShardRecord] = []
    written = 0
    with InputTars(out) as inputs:
        for index, rows in enumerate(plan):
            record, was_written = write_or_reuse_shard(out, index, kept.iloc[rows], inputs)
            records.append(record)
            written += was_written
    _remove_stale(out, {r.name for r in records})
    manifest = publish(out, records, curate_summary(storage, curate), cfg.shard)
    report = verify_shards(out)
    if not report.ok:
        raise ShardVerifyError("shards failed verification: " + "; ".join(report.problems))
    log.info(
        "shard: %d shards (%d written, %d kept from a previous run), %d samples",
        len(records),
        written,
        len(records) - written,
        manifest["total_samples"],
    )
    last = len(records) - 1
    return StageResult(
        counts={"kept": len(kept), "samples": manifest["total_samples"], "shards": len(records)},
        outputs={
            "folder": out.uri("shards"),
            "manifest": out.uri("shards", "manifest.json"),
            "sizes": out.uri("shards", "sizes.json"),
            "pattern": out.uri("shards", f"{{{shard_name(0)[:-4]}..{shard_name(last)[:-4]}}}.tar"),
        },
        extra={
            "shards_written": written,
            "shards_reused": len(records) - written,
            "bytes": manifest["total_bytes"],
        },
    )


def curate_summary(storage: Storage, curate: dict[str, Any]) -> dict[str, Any]:
    """What ``manifest.json`` says about its input: the curate manifest's URI and identity."""
    uri = manifest_uri(storage, "curate")
    return {
        "uri": uri,
        "sha256": hashlib.sha256(storage.read_bytes(uri)).hexdigest(),
        "finished_at": curate.get("finished_at"),
        "kept": curate["counts"]["kept"],
    }


def publish(
    storage: Storage, records: list[ShardRecord], curate: dict[str, Any], config: ShardConfig
) -> dict[str, Any]:
    """Write ``sizes.json`` then ``manifest.json`` (last: it is the shards' "done" marker)."""
    manifest = {
        "format": "webdataset",
        "format_version": FORMAT_VERSION,
        "shards": [
            {"name": r.name, "count": r.count, "bytes": r.bytes, "sha256": r.sha256}
            for r in records
        ],
        "total_samples": sum(r.count for r in records),
        "total_bytes": sum(r.bytes for r in records),
        "samples_per_shard": config.samples_per_shard,
        "seed": config.seed,
        "curate_manifest": curate,
        "created_at": datetime.now(UTC).isoformat(),
    }
    storage.write_json(storage.uri("shards", "sizes.json"), {r.name: r.count for r in records})
    storage.write_json(storage.uri("shards", "manifest.json"), manifest)
    return manifest
