"""download: img2dataset over the crawl candidates, into ``{root}/download/``.

Output is img2dataset's own webdataset layout (``00000.tar``, ``00000.parquet``,
``00000_stats.json`` per shard). ``{root}/download/_input/`` holds what it ran on: the
candidate list, the candidates refused before any request (SSRF guard), and the input
fingerprint that makes a rerun resume (same input: img2dataset's incremental mode skips the
shards whose stats file exists) or start over (new input).

Every candidate ends up counted: ``successes + sum(failed_<reason>) == candidates``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's import would phone home

import fsspec.config  # noqa: E402
import img2dataset  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.core.config import PipelineConfig  # noqa: E402
from tasks.core.lineage import upstream_digests
from tasks.core.manifest import StageResult
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage
from tasks.download.engines import distributor_engine, engine_environment
from tasks.download.fetch import (
    FetchPolicy,
    GuardedDownloader,
    MortalLoggerProcess,
    opencv_pixel_limit,
)
from tasks.download.pinned_http import check_destinations
from tasks.download.process_tree import WORKER_CONTEXT, run_in_process_tree

log = logging.getLogger(__name__)
# The package's `main` attribute is the function of that name, not the module.
i2d_main: Any = importlib.import_module("img2dataset.main")
i2d_distributor: Any = importlib.import_module("img2dataset.distributor")

CANDIDATE_COLUMNS = ["url", "caption", "page_url", "source", "caption_original_chars"]
# Candidates from before the crawl kept the length as found lack the last column: NULL there.
OPTIONAL_CANDIDATE_COLUMNS = {"caption_original_chars": "Int64"}

# Reasons our fetch names itself: its messages start with "<reason>: ".
GUARD_REASONS = (
    "ssrf_refused", "invalid_url", "unsupported_scheme", "dns_error", "deadline_exceeded",
    "redirect_loop", "too_many_pixels", "too_large", "truncated", "empty",
    "unsupported_format", "not_an_image", "url_blocked",
)  # fmt: skip

# img2dataset's (and the stdlib's) error messages -> stable failure reasons, first match wins.
_REASONS: tuple[tuple[str, str], ...] = (
    (rf"^({'|'.join(GUARD_REASONS)}):", r"\1"),
    (r"^timeout|timed out", "timeout"),
    (r"X-Robots-Tag", "opted_out"),
    (r"HTTP Error 404", "http_404"),
    (r"HTTP Error 4\d\d", "http_4xx"),
    (r"HTTP Error 5\d\d", "http_5xx"),
    (r"HTTP Error 3\d\d", "http_3xx"),
    (r"Connection refused|Name or service not known|Temporary failure|URLError", "unreachable"),
    (r"Remote end closed|RemoteDisconnected|IncompleteRead|Connection reset|BadStatusLine",
     "connection_broken"),
    (r"image smaller than|image too small", "too_small"),
    (r"aspect ratio", "bad_aspect_ratio"),
    (r"image area|CV_IO_MAX_IMAGE_PIXELS", "too_many_pixels"),
)  # fmt: skip


def failure_reason(status: str, error_message: str | None) -> str:
    """A short, stable name for why one sample failed (``http_404``, ``not_an_image``...)."""
    message = error_message or ""
    for pattern, name in _REASONS:
        match = re.search(pattern, message)
        if match:
            return match.expand(name)
    return "not_an_image" if status == "failed_to_resize" else "download_error"


def read_candidates(storage: Storage) -> pd.DataFrame:
    """All crawl candidates, in an order that depends on the pairs only.

    The crawler's workers write pairs as pages finish, so two crawls of one web list the same
    pairs in different orders; img2dataset names samples by position, so that order would
    become the sample keys and the training data's order. Ordering by a fixed hash of
    (url, caption) makes both repeatable, and spreads each host's images over the list."""
    files = storage.glob("crawl/candidates-*.parquet")
    if not files:
        raise FileNotFoundError(f"no crawl candidates under {storage.uri('crawl')}")
    frames = [pd.read_parquet(f, storage_options=storage.storage_options()) for f in files]
    candidates = pd.concat(frames, ignore_index=True)
    for name, dtype in OPTIONAL_CANDIDATE_COLUMNS.items():
        candidates[name] = candidates.get(name, pd.Series(pd.NA, index=candidates.index))
        candidates[name] = candidates[name].astype(dtype)
    candidates = candidates[CANDIDATE_COLUMNS]
    order = pd.util.hash_pandas_object(candidates[["url", "caption"]], index=False)
    # The hash first, then the columns themselves for (rare) equal hashes: a total order.
    ranked = candidates.assign(_order=order.to_numpy()).sort_values(
        ["_order", *CANDIDATE_COLUMNS], kind="stable"
    )
    return ranked.drop(columns="_order").reset_index(drop=True)


def fetch_policy(cfg: PipelineConfig) -> FetchPolicy:
    d = cfg.download
    return FetchPolicy(
        deadline_s=d.timeout,
        max_bytes=d.max_image_bytes,
        max_pixels=d.max_image_pixels,
        allow_private_networks=cfg.crawl.allow_private_networks,
        allow_private_hosts=tuple(cfg.crawl.allow_private_hosts),
        # Canonical (CurateConfig validates it), as the fetch compares hosts.
        blocked_domains=tuple(cfg.curate.url_blocklist),
    )


def split_refused(
    candidates: pd.DataFrame, policy: FetchPolicy
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates the SSRF guard refuses before any request, and the rest. Hosts are
    looked up once each, in parallel, each within the per-image deadline; a host that does
    not answer in time is refused (``dns_error``), as its images could not be fetched."""
    verdicts = check_destinations(
        candidates["url"].unique(), policy.destination, timeout=policy.deadline_s
    )
    reasons = [None if (v := verdicts[url]) is None else v.reason for url in candidates["url"]]
    refused_mask = pd.Series([r is not None for r in reasons], index=candidates.index)
    refused = candidates[refused_mask].assign(reason=[r for r in reasons if r is not None])
    return candidates[~refused_mask].reset_index(drop=True), refused.reset_index(drop=True)


def input_fingerprint(to_fetch: pd.DataFrame, cfg: PipelineConfig, crawl: str | None) -> str:
    """What img2dataset's output depends on: the list it fetches (after the SSRF pre-check,
    so a changed guard starts over), the download config, and which crawl listed it (the
    crawl manifest's digest ``crawl``): a rerun after a kill resumes, while a new crawl, even
    one that lists the same pairs, fetches afresh what the web serves now."""
    h = hashlib.sha256(pd.util.hash_pandas_object(to_fetch, index=False).values.tobytes())
    h.update(str(crawl).encode())
    h.update(cfg.download.model_dump_json().encode())
    h.update(repr(fetch_policy(cfg)).encode())
    return h.hexdigest()


@contextmanager
def _guarded_img2dataset(policy: FetchPolicy, s3_endpoint: str | None) -> Iterator[None]:
    """Make img2dataset fetch through ``GuardedDownloader``, start a logger process that dies
    with it, start its pool's workers by ``WORKER_START_METHOD`` (fork: in download-only
    runs of the demo, 31.4 s on average against 36.8 s with img2dataset's spawn) and reach
    our S3 endpoint."""
    saved_downloader, saved_env = i2d_main.Downloader, os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    saved_logger = i2d_main.LoggerProcess
    saved_context = i2d_distributor.get_context
    saved_conf = fsspec.config.conf.get("s3")
    GuardedDownloader.policy = policy
    i2d_main.Downloader = GuardedDownloader
    i2d_main.LoggerProcess = MortalLoggerProcess
    i2d_distributor.get_context = lambda _method: WORKER_CONTEXT
    if s3_endpoint:
        os.environ["FSSPEC_S3_ENDPOINT_URL"] = s3_endpoint  # fsspec config, inherited by workers
        # fsspec read the environment when it was imported: this process needs it set here.
        fsspec.config.conf["s3"] = {**(saved_conf or {}), "endpoint_url": s3_endpoint}
    try:
        yield
    finally:
        i2d_main.Downloader = saved_downloader
        i2d_main.LoggerProcess = saved_logger
        i2d_distributor.get_context = saved_context
        GuardedDownloader.policy = None
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        if s3_endpoint:
            if saved_env is None:
                os.environ.pop("FSSPEC_S3_ENDPOINT_URL", None)
            else:
                os.environ["FSSPEC_S3_ENDPOINT_URL"] = saved_env


def _prepare_output(storage: Storage, fingerprint: str, force: bool) -> None:
    """Keep finished shards only when they came from the same input (a resume)."""
    out, marker = storage.uri("download"), storage.uri("download", "_input", "fingerprint.txt")
    same_input = storage.exists(marker) and storage.read_bytes(marker).decode() == fingerprint
    if (force or not same_input) and storage.exists(out):
        log.info("download: input changed or forced; clearing %s", out)
        storage.remove(out, recursive=True)
    storage.write_bytes(marker, fingerprint.encode())


def run_img2dataset(cfg: PipelineConfig, storage: Storage, url_list: str) -> None:
    """Run img2dataset on one parquet list of candidates into ``{root}/download``, in a
    process tree that dies with this process (no orphan may write after the stage died)."""
    with (
        opencv_pixel_limit(cfg.download.max_image_pixels),  # inherited by the workers
        engine_environment(cfg.download.distributor),
    ):
        run_in_process_tree(_img2dataset, cfg, storage.uri("download"), url_list)


def _img2dataset(cfg: PipelineConfig, output_folder: str, url_list: str) -> None:
    d = cfg.download
    with (
        _guarded_img2dataset(fetch_policy(cfg), cfg.storage.s3_endpoint_url),
        distributor_engine(d.distributor, d.processes_count),
    ):
        img2dataset.download(
            url_list=url_list,
            output_folder=output_folder,
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=[c for c in CANDIDATE_COLUMNS if c not in ("url", "caption")],
            output_format="webdataset",
            image_size=d.image_size,
            resize_mode=d.resize_mode,
            resize_only_if_bigger=d.resize_only_if_bigger,
            encode_format=d.encode_format,
            encode_quality=d.effective_encode_quality,
            min_image_size=d.min_image_size,
            max_aspect_ratio=d.max_aspect_ratio,
            processes_count=d.processes_count,
            thread_count=d.thread_count,
            number_sample_per_shard=d.number_sample_per_shard,
            timeout=d.timeout,
            retries=d.retries,
            distributor=d.distributor,
            compute_hash=d.compute_hash,
            user_agent_token=d.user_agent_token,
            disallowed_header_directives=d.disallowed_header_directives,
            incremental_mode="incremental",
            enable_wandb=False,
        )


def shard_results(storage: Storage) -> pd.DataFrame:
    """``status`` and ``reason`` of every row of every finished shard."""
    files = [f for f in storage.glob("download/*.parquet") if re.search(r"/\d+\.parquet$", f)]
    cols = ["key", "url", "status", "error_message"]
    frames = [
        pd.read_parquet(f, columns=cols, storage_options=storage.storage_options()) for f in files
    ]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    rows["reason"] = [
        "success" if s == "success" else failure_reason(s, e)
        for s, e in zip(rows["status"], rows["error_message"], strict=True)
    ]
    return rows


def download_counts(candidates: int, *reasons: pd.Series) -> dict[str, int]:
    """``candidates``, ``successes`` and ``failed_<reason>``, each reason *summed* over
    every series (one reason can be counted both before and inside img2dataset)."""
    by_reason = pd.concat(reasons, ignore_index=True).value_counts()
    counts = {"candidates": candidates, "successes": int(by_reason.get("success", 0))}
    counts |= {f"failed_{k}": int(v) for k, v in sorted(by_reason.items()) if k != "success"}
    return counts


def download(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The download stage: candidates in, img2dataset shards out, every candidate counted."""
    candidates = read_candidates(storage)
    to_fetch, refused = split_refused(candidates, fetch_policy(cfg))
    crawl = upstream_digests(storage, cfg, "download")["crawl"]
    _prepare_output(storage, input_fingerprint(to_fetch, cfg, crawl), ctx.force)
    input_dir = storage.uri("download", "_input")
    with storage.atomic_local_path(f"{input_dir}/refused.parquet") as (fh, _):
        refused.to_parquet(fh, index=False)
    list_uri = f"{input_dir}/candidates.parquet"
    with storage.atomic_local_path(list_uri) as (fh, _):
        to_fetch.to_parquet(fh, index=False)
    if len(to_fetch):
        run_img2dataset(cfg, storage, list_uri)
    rows = shard_results(storage)
    if len(rows) != len(to_fetch):
        raise RuntimeError(
            f"download: {len(rows)} rows in shard metadata for {len(to_fetch)} candidates; "
            f"a shard failed (see img2dataset's log), rerun to resume"
        )
    counts = download_counts(len(candidates), rows["reason"], refused["reason"])
    stats = storage.glob("download/*_stats.json")
    return StageResult(
        counts=counts,
        outputs={"folder": storage.uri("download"), "shards": len(stats)},
    )
