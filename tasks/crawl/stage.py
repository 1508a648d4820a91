"""The crawl stage: image-text candidates from the site crawler and from WAT/WARC files.

Output: ``{root}/crawl/candidates-NNNNN.parquet`` (``url, caption, page_url, source,
crawl_time, caption_original_chars``), ``crawl.rows_per_file`` rows per file, and
``{root}/crawl/errors.parquet`` (``url, reason, detail, referrer, source``): every page or
record that gave nothing, with why. Both are streamed as the crawl goes (see
tasks.crawl.candidates), so memory does not grow with the number of candidates. Captions
longer than ``crawl.max_caption_chars`` are truncated, their length as found kept for
curate's too-long rule; exact (url, caption) duplicates are dropped. The counts add up
(checked before the stage returns, see ``accounting_violations``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec

from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.safe_http import check_url
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage
from tasks.crawl.candidates import SPOOL_FOLDER, CandidateWriter, PairSpool, replay_spool
from tasks.crawl.site_crawler import crawl_sites
from tasks.crawl.wat import ArchiveInputError, read_archive

log = logging.getLogger(__name__)

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


class CrawlAccountingError(RuntimeError):
    """The crawl's counts do not add up: a bug, never a property of the input."""


def accounting_violations(counts: Mapping[str, int], rows_written: int) -> list[str]:
    """Each identity of the crawl's counts that does not hold, written out; empty when all do.

    Pages: every URL that entered the frontier has one outcome, each failure one reason.
    Links: every link on a fetched page is followed or skipped for one reason. WAT records:
    each is read or failed. Pairs: every pair found came from a source and was written or
    dropped as a duplicate; the files hold exactly the rows kept; every failure is reported.
    """
    c = Counter(counts)

    def total(prefix: str) -> int:
        return sum(v for k, v in c.items() if k.startswith(prefix))

    identities = [
        (
            "pages_discovered",
            [
                "pages_fetched",
                "pages_failed",
                "pages_redirect_duplicate",
                "pages_unvisited_max_pages",
            ],
        ),
        ("pages_failed", ["pages_failed_*"]),
        (
            "links_found",
            [
                "links_followed",
                "links_already_seen",
                "links_off_domain",
                "links_skipped_page_cap",
                "links_skipped_frontier_full",
            ],
        ),
        ("archive_wat_records", ["archive_wat_records_read", "archive_wat_records_failed"]),
        ("pairs_found", ["pairs_found_site", "archive_pairs_found_*"]),
        ("pairs_found", ["pairs_after_dedup", "duplicates_dropped"]),
        ("errors_reported", ["pages_failed", "archive_wat_records_failed"]),
    ]
    broken = []
    for name, parts in identities:
        values = [total(p[:-1]) if p.endswith("*") else c[p] for p in parts]
        if c[name] != sum(values):
            terms = " + ".join(f"{p} ({v})" for p, v in zip(parts, values, strict=True))
            broken.append(f"{name} ({c[name]}) != {terms}")
    if rows_written != c["pairs_after_dedup"]:
        broken.append(
            f"rows written ({rows_written}) != pairs_after_dedup ({c['pairs_after_dedup']})"
        )
    return broken


@dataclass(frozen=True)
class ArchiveJob:
    """One WAT/WARC file to read, the ``index``-th of ``crawl.wat_files``."""

    cfg: PipelineConfig
    uri: str
    index: int


def read_archive_part(job: ArchiveJob) -> dict[str, int]:
    """A mapped task: one archive's pairs and errors into its spool (``PairSpool``); its
    counts, named as the stage counts them."""
    storage = Storage(job.cfg.storage)
    with PairSpool(storage, job.index) as spool:
        archive = read_archive(job.uri, _archive_options(job.uri, storage), job.cfg.crawl, spool)
    return {f"archive_{k}": v for k, v in archive.counts.items() if v}


def crawl(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The crawl stage body: site crawl from ``crawl.seeds``, then ``crawl.wat_files``, one
    mapped task per file (on the flow's task runner), whose pairs join the candidates in the
    files' order. Raises CrawlAccountingError, before any manifest is written, if the counts
    do not add up."""
    c = cfg.crawl
    _check_wat_inputs(cfg, storage)
    spools = storage.uri("crawl", SPOOL_FOLDER)
    storage.remove(spools, recursive=True)  # a killed run's
    counts: Counter[str] = Counter()
    with CandidateWriter(storage, c.rows_per_file, c.max_caption_chars) as out:
        if c.seeds:
            site = run_async(crawl_sites(c, sink=out))
            counts.update({k: v for k, v in site.counts.items() if v})
        jobs = [ArchiveJob(cfg, uri, i) for i, uri in enumerate(c.wat_files)]
        for job, archive_counts in zip(
            jobs, ctx.map_tasks(read_archive_part, jobs) if jobs else [], strict=True
        ):
            counts.update(archive_counts)
            replay_spool(storage, job.index, out)
    storage.remove(spools, recursive=True)
    counts.update(out.counts)
    broken = accounting_violations(counts, out.candidates_written)
    if broken:
        raise CrawlAccountingError("crawl: counts do not add up: " + "; ".join(broken))
    log.info(
        "crawl: %d candidates in %d files, %d errors",
        out.candidates_written,
        len(out.candidate_uris),
        counts["errors_reported"],
    )
    return StageResult(
        counts=dict(sorted(counts.items())),
        outputs={"candidates": out.candidate_uris, "errors": out.errors_uri},
    )
