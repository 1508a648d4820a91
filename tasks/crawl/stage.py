"""The crawl stage: image-text candidates from the site crawler and from WAT/WARC files.

Output: ``{root}/crawl/candidates-NNNNN.parquet`` (``url, caption, page_url, source,
crawl_time``), ``crawl.rows_per_file`` rows per file, and ``{root}/crawl/errors.parquet``
(``url, reason, detail, referrer, source``): every page or record that gave nothing, with why.
Captions longer than ``crawl.max_caption_chars`` are truncated; exact (url, caption)
duplicates are dropped, so ``pairs_found == pairs_after_dedup + duplicates_dropped``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.safe_http import check_url
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage
from tasks.crawl.site_crawler import crawl_sites
from tasks.crawl.wat import ArchiveInputError, read_archive

log = logging.getLogger(__name__)

CANDIDATE_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("page_url", pa.string()),
        ("source", pa.string()),
        ("crawl_time", pa.timestamp("us", tz="UTC")),
    ]
)
ERROR_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("url", "reason", "detail", "referrer", "source")]
)
Row = tuple[str, str, str, str, datetime]
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also from code already inside an event loop (a flow
    run may be), by giving it a fresh loop on a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _check_wat_inputs(cfg: PipelineConfig, storage: Storage) -> None:
    """Fail before any work on a WAT/WARC input that cannot be used, naming it."""
    for uri in cfg.crawl.wat_files:
        if uri.startswith(("http://", "https://")):
            reason = check_url(uri, cfg.crawl.allow_private_networks, cfg.crawl.allow_private_hosts)
            if reason is not None:
                raise ArchiveInputError(f"crawl.wat_files: {uri} refused ({reason})")
        elif not uri.startswith("s3://") and "://" in uri and not uri.startswith("file://"):
            raise ArchiveInputError(f"crawl.wat_files: {uri}: unsupported scheme")
        elif not _exists(uri, storage):
            raise ArchiveInputError(f"crawl.wat_files: {uri} does not exist")


def _archive_options(uri: str, storage: Storage) -> dict[str, Any]:
    return storage.storage_options() if uri.startswith("s3://") else {}


def _exists(uri: str, storage: Storage) -> bool:
    fs, path = fsspec.core.url_to_fs(uri, **_archive_options(uri, storage))
    return bool(fs.exists(path))


def _finalize(rows: list[Row], max_chars: int, counts: Counter[str]) -> list[Row]:
    """Truncate long captions, then drop exact (url, caption) duplicates, keeping the first."""
    seen: set[tuple[str, str]] = set()
    kept: list[Row] = []
    for url, caption, page_url, source, when in rows:
        if len(caption) > max_chars:
            caption = caption[:max_chars].rstrip()
            counts["captions_truncated"] += 1
        if (url, caption) in seen:
            counts["duplicates_dropped"] += 1
            continue
        seen.add((url, caption))
        kept.append((url, caption, page_url, source, when))
    counts["pairs_after_dedup"] = len(kept)
    return kept


def _write_table(storage: Storage, uri: str, table: pa.Table) -> None:
    with storage.atomic_local_path(uri) as (fh, _):
        pq.write_table(table, fh, compression="zstd")


def write_candidates(storage: Storage, rows: list[Row], rows_per_file: int) -> list[str]:
    """Write candidates-NNNNN.parquet files (one, empty, when there are no rows) and remove
    any higher-numbered files left by an earlier, larger run."""
    uris = []
    for n, start in enumerate(range(0, max(len(rows), 1), rows_per_file)):
        chunk = rows[start : start + rows_per_file]
        columns: list[tuple[Any, ...]] = (
            list(zip(*chunk, strict=True)) if chunk else [() for _ in CANDIDATE_SCHEMA]
        )
        arrays = [
            pa.array(col, type=f.type) for f, col in zip(CANDIDATE_SCHEMA, columns, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, schema=CANDIDATE_SCHEMA)
        uri = storage.uri("crawl", f"candidates-{n:05d}.parquet")
        _write_table(storage, uri, table)
        uris.append(uri)
    for stale in storage.glob("crawl/candidates-*.parquet"):
        if stale not in uris:
            storage.remove(stale)
    return uris


def write_errors(storage: Storage, errors: list[dict[str, str]]) -> str:
    """Write errors.parquet (url, reason, detail, referrer, source): one row per page or
    record that gave nothing, so failures are reported rather than silently dropped."""
    uri = storage.uri("crawl", "errors.parquet")
    columns = {f.name: [str(e.get(f.name, "")) for e in errors] for f in ERROR_SCHEMA}
    _write_table(storage, uri, pa.table(columns, schema=ERROR_SCHEMA))
    return uri


def crawl(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The crawl stage body: site crawl from ``crawl.seeds``, then ``crawl.wat_files``."""
    c = cfg.crawl
    _check_wat_inputs(cfg, storage)
    counts: Counter[str] = Counter()
    rows: list[Row] = []
    errors: list[dict[str, str]] = []
    if c.seeds:
        site = run_async(crawl_sites(c))
        counts.update({k: v for k, v in site.counts.items() if v})
        rows += [(u, cap, page, "site", when) for u, cap, page, when in site.pairs]
        errors += [{**e, "source": "site"} for e in site.errors]
    for uri in c.wat_files:
        archive = read_archive(uri, _archive_options(uri, storage), c.max_page_bytes, c.timeout)
        counts.update({f"archive_{k}": v for k, v in archive.counts.items() if v})
        rows += [(u, cap, page, source, when) for u, cap, page, when, source in archive.pairs]
        errors += [{**e, "referrer": "", "source": uri} for e in archive.errors]
    counts["pairs_found"] = len(rows)
    kept = _finalize(rows, c.max_caption_chars, counts)
    counts.setdefault("duplicates_dropped", 0)
    counts.setdefault("captions_truncated", 0)
    candidates = write_candidates(storage, kept, c.rows_per_file)
    errors_uri = write_errors(storage, errors)
    counts["errors_reported"] = len(errors)
    log.info("crawl: %d candidates in %d files, %d errors", len(kept), len(candidates), len(errors))
    return StageResult(
        counts=dict(sorted(counts.items())),
        outputs={"candidates": candidates, "errors": errors_uri},
    )
