"""The curate stage: ``{root}/download/`` in, ``{root}/curate/samples.parquet`` and
``{root}/curate/report/`` out.

Per-shard work (decode, hash, language ID) is mapped over download shards by the run
context's ``map_tasks`` (a list comprehension in plain Python, Prefect tasks in the flow); the
global steps (SQL rules, decontamination, dedup across shards, the gate) then run on the
whole table in DuckDB and FAISS, the near-duplicate candidate search split into
``near_dup_shards`` mapped tasks when set (tasks/curate/knn_shards.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import re
import tempfile
from collections.abc import Callable
from typing import Any

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from model.tario import is_image, iter_members
from tasks.core.config import CurateConfig, PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.sql import bind, connect, run_sql
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage
from tasks.curate.dedup import (
    DEDUP_RULES,
    DedupOutcome,
    decontamination_matches,
    match_config,
    run_dedup,
)
from tasks.curate.faiss_device import uses_gpu
from tasks.curate.features import ShardJob, curate_shard, embeddings_uri
from tasks.curate.gate import write_report
from tasks.curate.near_dup import (
    THUMB_BYTES,
    THUMBNAIL_VERSION,
    image_thumbnail,
    thumbnails_array,
    thumbnails_resolution,
)
from tasks.curate.rules import apply_rules, combine

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"^\d+\.parquet$")


def list_download_shards(storage: Storage) -> list[str]:
    """URIs of the download shard parquets (``NNNNN.parquet``; not ``refused.parquet``)."""
    found = storage.glob("download/*.parquet")
    return [uri for uri in found if _SHARD_NAME.match(posixpath.basename(uri))]


def curate(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The stage body: features per shard, then rules, decontamination, dedup and the gate
    on the whole table. Raises (before the manifest is written) if the gate fails."""
    uses_gpu(cfg.curate.faiss_device)  # faiss_device: gpu without one refuses before any work
    shards = list_download_shards(storage)
    if not shards:
        raise FileNotFoundError(f"{storage.uri('download')}: no download shards (NNNNN.parquet)")
    jobs = [
        ShardJob(cfg, uri, storage.uri("curate", "_parts", posixpath.basename(uri)))
        for uri in shards
    ]
    parts = ctx.map_tasks(curate_shard, jobs)
    ctx.log_line(
        "curate: global steps (rules, decontamination, dedup, gate) in the flow process, "
        f"pid {os.getpid()}"
    )
    with tempfile.TemporaryDirectory(prefix="clipflow-curate-") as tmp:
        con = open_database(cfg.curate, tmp)
        try:
            _load_features(con, storage, parts, tmp)
            apply_rules(con, cfg.curate)
            keys = [k for (k,) in run_sql(con, "curate/keys_by_rid").fetchall()]
            contamination = _decontaminate(con, cfg, storage, len(keys))
            con.register("contamination", contamination)
            run_sql(con, "curate/live")
            embeddings = _embeddings_by_rid(storage, parts) if cfg.curate.semantic_dedup else None
            outcome = run_dedup(con, cfg.curate, embeddings, ctx.map_tasks,
                                storage.uri("curate", "_near_dup_shards"))  # fmt: skip
            combine(con, _decisions(keys, contamination, outcome))
            samples_uri = storage.uri("curate", "samples.parquet")
            _write_samples(con, storage, samples_uri, tmp)
            report = write_report(
                con, cfg, storage, storage.uri("curate", "report"), tmp, outcome.pairs
            )
        finally:
            con.close()
    log.info("curate: %d in, %d kept", report.summary["input"], report.summary["kept"])
    report.raise_if_failed(cfg.curate.gate)
    counts = {"input": report.summary["input"], "kept": report.summary["kept"]}
    counts |= {f"dropped_{r}": n for r, n in report.summary["dropped_by_reason"].items()}
    return StageResult(
        counts=counts,
        outputs={"samples": samples_uri, "report": report.uris},
        extra={"gate": report.summary["gate"]["success"], "shards": len(shards)},
    )


def open_database(cfg: CurateConfig, folder: str) -> duckdb.DuckDBPyConnection:
    """The stage's DuckDB database, a file in the local ``folder``, within
    ``duckdb_memory_limit`` and spilling to ``duckdb_temp_dir`` (default: beside the file)."""
    return connect(
        os.path.join(folder, "curate.duckdb"), cfg.duckdb_memory_limit, cfg.duckdb_temp_dir
    )


def _load_features(
    con: duckdb.DuckDBPyConnection, storage: Storage, parts: list[str], tmp: str
) -> None:
    """Copy the parts next to DuckDB (object stores need no DuckDB extension this way),
    numbering rows 0..n-1 in shard order (``rid``: unique even where keys repeat)."""
    local = []
    offset = 0
    for i, uri in enumerate(parts):
        with storage.open(uri, "rb") as fh:
            table = pq.read_table(fh)
        rids = pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64))
        offset += table.num_rows
        path = os.path.join(tmp, f"part-{i:06d}.parquet")
        pq.write_table(table.add_column(0, "rid", rids), path)
        local.append(path)
    run_sql(con, "curate/load_features", {"files": local})


def _embeddings_by_rid(storage: Storage, parts: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """rids -> their CLIP image embeddings (the parts' matrices, concatenated, are in rid
    order: rids number the parts' rows in the same order)."""

    def lookup(rids: np.ndarray) -> np.ndarray:
        matrices = [np.load(io.BytesIO(storage.read_bytes(embeddings_uri(p)))) for p in parts]
        return np.concatenate(matrices)[rids]

    return lookup


def eval_image_thumbnails(cfg: PipelineConfig, storage: Storage) -> tuple[list[bytes], list[str]]:
    """Matching thumbnails (``image_thumbnail`` blobs) of every image in the evaluate stage's
    datasets (CLIP_benchmark WebDataset layout ``{path}/{split}/*.tar``), with labels
    ``dataset/sample``. Each dataset's thumbnails are cached under ``curate/_eval_thumbs/``,
    keyed by the digest of its tars' bytes and the thumbnail format, so a rerun decodes
    none of them again."""
    blobs: list[bytes] = []
    labels: list[str] = []
    for dataset in cfg.evaluate.datasets:
        pattern = posixpath.join(dataset.path.rstrip("/"), dataset.split, "*.tar")
        options = storage.storage_options() if pattern.startswith("s3://") else {}
        files = fsspec.open_files(pattern, "rb", **options)
        if not files:
            raise FileNotFoundError(
                f"evaluate.datasets[{dataset.name!r}]: no tars at {pattern} to decontaminate against"
            )
        cache = storage.uri("curate", "_eval_thumbs", f"{dataset.name}-{_tars_digest(files)}.npz")
        thumbs, names = _dataset_thumbnails(files, cache, storage)
        blobs += [row.tobytes() for row in thumbs]
        labels += [f"{dataset.name}/{name}" for name in names]
    return blobs, labels


def _dataset_thumbnails(
    files: list[Any], cache: str, storage: Storage
) -> tuple[np.ndarray, list[str]]:
    """(n, THUMB_BYTES) uint8 thumbnails and sample names of one dataset's tars: read from
    ``cache`` when it is there, else computed and written there."""
    if storage.exists(cache):
        with np.load(io.BytesIO(storage.read_bytes(cache))) as cached:
            return cached["thumbs"], cached["names"].tolist()
    thumbs, names = _thumbnails_of_tars(files)
    array = np.frombuffer(b"".join(thumbs), np.uint8).reshape(len(thumbs), THUMB_BYTES)
    buf = io.BytesIO()
    np.savez(buf, thumbs=array, names=np.array(names, dtype=str))
    storage.write_bytes(cache, buf.getvalue())
    log.info("decontamination: thumbnails of %d evaluation images cached at %s", len(names), cache)
    return array, names


def _tars_digest(files: list[Any]) -> str:
    """sha256 (hex, 16 digits) of the tars' names and bytes and of the thumbnail format."""
    digest = hashlib.sha256(f"thumbnail v{THUMBNAIL_VERSION}".encode())
    for of in files:
        digest.update(posixpath.basename(of.path).encode() + b"\0")
        with of as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()[:16]


def _thumbnails_of_tars(files: list[Any]) -> tuple[list[bytes], list[str]]:
    """Thumbnails of every image in the tars (fsspec OpenFiles), with its sample name (no
    extension)."""
    thumbs, names = [], []
    for of in files:
        with of as fh:
            for name, data in iter_members(fh, of.path, is_image):
                with Image.open(io.BytesIO(data)) as image:
                    thumbs.append(image_thumbnail(image))
                names.append(name.rsplit(".", 1)[0])
    return thumbs, names


def _decontaminate(
    con: duckdb.DuckDBPyConnection, cfg: PipelineConfig, storage: Storage, n: int
) -> pa.Table:
    """Table (rid, drop_eval_contamination, eval_match) over all n rows."""
    flags = np.zeros(n, dtype=bool)
    match: list[str | None] = [None] * n
    if cfg.curate.decontaminate and cfg.evaluate.datasets:
        eval_blobs, eval_labels = eval_image_thumbnails(cfg, storage)
        rows = run_sql(con, "curate/hashed_rows").fetchnumpy()
        rids = np.asarray(rows["rid"], dtype=np.int64)
        train_blobs = list(rows["thumb"])
        found = decontamination_matches(
            thumbnails_array(train_blobs), thumbnails_array(eval_blobs), eval_labels,
            match_config(cfg.curate),
            thumbnails_resolution(train_blobs, np.asarray(rows["native_detail"], np.float64)),
            thumbnails_resolution(eval_blobs),
        )  # fmt: skip
        for i, label in found.items():
            flags[rids[i]] = True
            match[rids[i]] = label
        log.info("decontamination: %d training images match %d eval images", len(found),
                 len(eval_blobs))  # fmt: skip
    return pa.table(
        {"rid": pa.array(np.arange(n), pa.int64()), "drop_eval_contamination": flags,
         "eval_match": pa.array(match, pa.string())}
    )  # fmt: skip


def _decisions(keys: list[str], contamination: pa.Table, outcome: DedupOutcome) -> pa.Table:
    """rid, the decontamination columns, one drop_<rule> per dedup rule, and duplicate_of
    (the key of the surviving row of its group, following chains across dedup steps)."""
    n = len(keys)
    columns: dict[str, Any] = {c: contamination.column(c) for c in contamination.column_names}
    # Keys among dedup candidates are unique (repeated keys never take part).
    by_key: dict[str, str] = {}
    for rule in DEDUP_RULES:
        flags = np.zeros(n, dtype=bool)
        flags[list(outcome.dropped[rule])] = True
        columns[f"drop_{rule}"] = flags
        by_key |= {keys[rid]: survivor for rid, survivor in outcome.dropped[rule].items()}
    duplicate_of: list[str | None] = [None] * n
    for rule in DEDUP_RULES:
        for rid, survivor in outcome.dropped[rule].items():
            while survivor in by_key:
                survivor = by_key[survivor]
            duplicate_of[rid] = survivor
    columns["duplicate_of"] = pa.array(duplicate_of, pa.string())
    return pa.table(columns)


def _write_samples(con: duckdb.DuckDBPyConnection, storage: Storage, uri: str, tmp: str) -> None:
    local = os.path.join(tmp, "samples.parquet")
    text = bind("curate/samples_out", {})[0]
    con.execute(f"COPY ({text}) TO '{local}' (FORMAT parquet)")
    storage.write_file(local, uri)
