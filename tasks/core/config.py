"""Typed pipeline configuration: one typed section per stage, composed into PipelineConfig.

The sections are pydantic models, except ``train``, which is ``model.train_config``'s
dataclass embedded as it is (``model/`` owns its schema and stays free of the pipeline).
Every section forbids unknown keys, so a typo in YAML fails before any work starts with a
message naming the field (``crawl.max_pagse: Extra inputs are not permitted``).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# The train section's schema belongs to model/ (a dataclass this module embeds, never copies).
from model.train_config import TrainConfig
from tasks.core.hosts import blocklist_domain
from tasks.core.languages import IDENTIFIED_LANGUAGES

ALLOW_PRIVATE_ENV = "CLIPFLOW_ALLOW_PRIVATE_NETWORKS"
"""Private-network access needs this set to 1 in the environment of the process that loads
the config, as well as the config switch: a parameter edited in a UI alone cannot open it."""


def private_networks_permitted() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV) == "1"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Section):
    root: str = "data"
    s3_endpoint_url: str | None = None
    """S3 API endpoint (MinIO, Ceph, moto_server); None means AWS. Credentials come from the
    environment or the standard AWS config files, never from this file."""
    s3_region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @field_validator("s3_endpoint_url")
    @classmethod
    def _no_credentials_in_endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s) URL with a host")
            if parts.username is not None or parts.password is not None:
                raise ValueError(
                    "must not carry credentials (user:password@): they would be copied into "
                    "manifests and logs; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
        return v


class CrawlConfig(_Section):
    seeds: list[str] = Field(default_factory=list)
    wat_files: list[str] = Field(default_factory=list)
    max_pages: int = Field(1000, ge=0)
    max_frontier_urls: int = Field(100_000, gt=0)
    """Most distinct page URLs the site crawler remembers (queued, visited or left unvisited
    past max_pages; ~150 bytes each). Links found once it is full are counted
    (``links_skipped_frontier_full``) and not followed. At least max_pages."""
    max_links_per_page: int = Field(5_000, gt=0)
    """Links followed from one page; the rest are counted (``links_skipped_page_cap``)."""
    max_images_per_page: int = Field(1_000, gt=0)
    """Images taken from one page or WAT/WARC record; the rest are counted
    (``images_skipped_page_cap``)."""
    allowed_domains: list[str] = Field(default_factory=list)
    """Hosts (and their subdomains) the site crawler may follow; empty means the seeds' hosts."""
    allow_private_networks: bool = False
    """Let the crawler reach private, loopback and link-local addresses. Demo and tests only."""
    allow_private_hosts: list[str] = Field(default_factory=list)
    """"host:port" origins reachable even though private (an internal mirror), while every
    other private address stays refused; tests use it to check the guard on loopback only."""
    concurrency: int = Field(8, ge=1)
    per_host_delay: float = Field(0.0, ge=0)
    """Seconds between two requests to the same host (robots.txt Crawl-delay wins if larger)."""
    max_crawl_delay: float = Field(30.0, ge=0)
    """Upper bound on a robots.txt Crawl-delay, so one site cannot stall the crawl."""
    timeout: float = Field(10.0, gt=0)
    max_page_bytes: int = Field(5_000_000, gt=0)
    """Cap on one page's body after decompression (a larger page is ``too_large``); also on
    a WARC response record's body."""
    max_record_bytes: int = Field(10_000_000, gt=0)
    """Cap on one WAT metadata record's JSON payload after decompression; a larger record is
    counted (``wat_records_too_large``) and skipped without being held whole. Also caps one
    record's WARC/HTTP headers (past it the archive is refused as unreadable)."""
    max_redirects: int = Field(5, ge=0)
    max_caption_chars: int = Field(1000, gt=0)
    user_agent: str = "clipflow-crawler/0.1 (+https://github.com/clipflow/clipflow)"
    respect_robots: bool = True
    rows_per_file: int = Field(100_000, gt=0)

    @field_validator("seeds")
    @classmethod
    def _seeds_are_http_urls(cls, v: list[str]) -> list[str]:
        for seed in v:
            parts = urlsplit(seed)  # raises ValueError on a malformed URL
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{seed!r} is not an http(s) URL with a host")
        return v

    @model_validator(mode="after")
    def _private_access_needs_the_environment(self) -> CrawlConfig:
        opened = [
            name
            for name, on in (
                ("allow_private_networks", self.allow_private_networks),
                ("allow_private_hosts", bool(self.allow_private_hosts)),
            )
            if on
        ]
        if opened and not private_networks_permitted():
            raise ValueError(
                f"{' and '.join(opened)} would let the crawl and the download reach private "
                f"and loopback addresses; that needs {ALLOW_PRIVATE_ENV}=1 in the environment "
                "of the process running the pipeline as well (the demo and the tests set it), "
                "so that a config edited in a UI alone cannot open it"
            )
        return self

    @model_validator(mode="after")
    def _frontier_holds_max_pages(self) -> CrawlConfig:
        if self.max_frontier_urls < self.max_pages:
            raise ValueError(
                f"max_frontier_urls ({self.max_frontier_urls}) is below max_pages "
                f"({self.max_pages}): the crawl could never visit max_pages pages"
            )
        return self

    @field_validator("allow_private_hosts")
    @classmethod
    def _hosts_have_ports(cls, v: list[str]) -> list[str]:
        for entry in v:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{entry!r} is not host:port")
        return [entry.lower() for entry in v]


class DownloadConfig(_Section):
    image_size: int = Field(256, gt=0)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = (
        "center_crop"
    )
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int | None = Field(None, ge=0, le=100)
    """JPEG/WebP quality (1-100, default 95) or PNG compression level (0-9, default 1)."""
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(float("inf"), gt=0)
    max_image_bytes: int = Field(50_000_000, gt=0)
    max_image_pixels: int = Field(89_478_485, gt=0)
    """Decoded-pixel cap: larger images are refused from their header, before decoding."""
    processes_count: int = Field(2, ge=1)
    thread_count: int = Field(16, ge=1)
    number_sample_per_shard: int = Field(10_000, gt=0)
    retries: int = Field(0, ge=0)
    timeout: float = Field(10.0, gt=0)
    """Total seconds per image, connect to last byte (a slow-drip server cannot exceed it)."""
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    user_agent_token: str | None = "clipflow"
    compute_hash: Literal["sha256", "md5", "sha512"] | None = "sha256"

    @model_validator(mode="after")
    def _quality_fits_format(self) -> DownloadConfig:
        if self.encode_format == "png" and self.encode_quality is not None:
            if self.encode_quality > 9:
                raise ValueError("encode_quality is a PNG compression level here: 0-9")
        elif self.encode_quality == 0:
            raise ValueError(f"encode_quality for {self.encode_format}: 1-100")
        return self

    @property
    def effective_encode_quality(self) -> int:
        if self.encode_quality is not None:
            return self.encode_quality
        return 1 if self.encode_format == "png" else 95


@cache
def _duckdb_regex_error(pattern: str) -> str | None:
    """Why DuckDB's regex engine (RE2) refuses ``pattern``, or None. Asked of DuckDB itself:
    Python's re accepts a lookbehind that RE2 refuses, and refuses RE2's ``\\pL``."""
    import duckdb  # here: parsing a config elsewhere needs no database engine

    with duckdb.connect() as con:
        try:
            con.execute("SELECT regexp_full_match('', ?)", [pattern])
        except duckdb.InvalidInputException as e:
            return str(e).removeprefix("Invalid Input Error: ")
    return None


class CurateConfig(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_caption_chars: int = Field(5, ge=0)
    min_caption_words: int = Field(2, ge=0)
    max_caption_chars: int = Field(1000, gt=0)
    min_image_side: int = Field(16, ge=0)
    max_aspect_ratio: float = Field(3.0, gt=0)
    allowed_languages: list[str] = Field(default_factory=lambda: ["en"])
    min_allowed_language_probability: float = Field(0.03, ge=0, le=1)
    """A caption is dropped as ``language`` when the language identifiers' mean probability
    that it is in one of ``allowed_languages`` is below this (``tasks/curate/language.py``;
    calibrated by ``bench/bench_language_quality.py``)."""
    min_allowed_language_probability_short: float = Field(0.01, ge=0, le=1)
    """The same, for captions of fewer than ``language_short_words`` words: the identifiers
    read less there, and English drops concentrate in them (calibrated alike)."""
    language_short_words: int = Field(4, ge=0)
    """Captions of fewer words (``caption_words``) are judged against the short threshold."""
    language_min_chars: int = Field(0, ge=0)
    """Captions shorter than this are not judged by language."""
    url_blocklist: list[str] = Field(default_factory=list)
    """Domains (and their subdomains) whose URLs or pages are dropped. Stored as hosts are
    compared (``tasks.core.hosts``): IDNA-encoded, lower case, no root dot; a URL or a path
    is refused."""
    boilerplate_captions: list[str] = Field(
        default_factory=lambda: [
            "image",
            "img",
            "photo",
            "picture",
            "untitled",
            "untitled image",
            "thumbnail",
            "logo",
            "icon",
            "banner",
            "placeholder",
            "spacer",
            "null",
            "none",
            "alt",
            "n/a",
        ]
    )
    boilerplate_filename_pattern: str = (
        r"[\w\-. ()]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)"
        r"|(img|dsc|dscn|dcim|pxl|photo|image|screenshot)[\s_\-]*\d+"
    )
    """Regex over the whole normalised caption: camera and file names are not captions. RE2
    syntax, as DuckDB runs it (no lookaround, no backreferences); checked when read."""
    boilerplate_filename_max_words: int = Field(3, ge=0)
    """Captions of more words are never taken for a file name (the regex is skipped)."""
    near_dup_min_similarity: float = Field(0.99, ge=-1, le=1)
    """Verified similarity (best windowed colour correlation, tasks.curate.near_dup) at or
    above which two images are near-duplicates; calibrated by bench/bench_dedup_quality.py."""
    near_dup_band_min_similarity: float = Field(0.975, ge=-1, le=1)
    """Pairs from here up to near_dup_min_similarity are near-duplicates too when what differs
    between them is spread over the picture (noise, as re-encoding and brightness changes
    leave), not gathered in one place (a changed detail): see
    near_dup_max_residual_concentration. 1 turns the band off (the pixel matcher is off when
    this and near_dup_min_similarity are both 1)."""
    near_dup_max_residual_concentration: float = Field(0.25, ge=0, le=1)
    """Largest share of a band pair's residual (after the best brightness/contrast fit) that
    one block of a quarter of the side by a quarter may hold."""
    near_dup_local_max_share: float = Field(0.5, ge=0, le=1)
    """The local-difference veto (tasks.curate.near_dup.local_difference): a verified pair is
    no duplicate when one block of a quarter of the side by a quarter holds more than this
    share of what differs between the two (after the best brightness/contrast fit, which may
    clip), that block more than near_dup_local_min_residual of the picture's variance, and
    the difference's centre at least near_dup_local_min_border of the side from every edge.
    1 turns the veto off. Near-duplicate removal only: decontamination does without it (a
    false match there costs one training sample). Calibrated with
    bench/bench_dedup_quality.py (see its docstring)."""
    near_dup_local_min_residual: float = Field(0.004, ge=0)
    """The local-difference veto: the least residual (a share of the picture's variance) in
    the block where the difference gathers."""
    near_dup_local_min_border: float = Field(0.14, ge=0, le=0.5)
    """The local-difference veto: how far from every edge (a fraction of the side) the
    difference's centre must lie; nearer an edge it may be a watermark a copy added."""
    near_dup_band_max_distance_ratio: float = Field(0.1, gt=0)
    """The ratio test for band pairs, stricter than near_dup_max_distance_ratio: at 0.15 the
    band let two distinct Fashion-MNIST garments of the demo web match test images (their
    differences are spread too); at 0.1 decontamination matches what it matched without
    the band."""
    near_dup_max_distance_ratio: float = Field(0.15, gt=0)
    """Ratio test: a pair's distance (1 - similarity) must be at most this times each image's
    distance to its near_dup_ratio_rank-th closest other candidate (look-alike crowds fail)."""
    near_dup_ratio_rank: int = Field(2, ge=1)
    """Which other candidate the ratio test compares with: 2 lets a picture and two copies of
    it still merge."""
    near_dup_candidate_k: int = Field(4, ge=1)
    """Nearest neighbours per image view that FAISS proposes for verification."""
    near_dup_candidate_min_similarity: float = Field(0.6, ge=-1, le=1)
    """Coarse (8x8) correlation below which a neighbour is not even verified (generous)."""
    near_dup_flat_max_rows: int = Field(50_000, ge=0)
    """Up to this many thumbnail views the candidate index is flat (exact), beyond it IVF."""
    near_dup_ivf_nprobe: int = Field(16, ge=1)
    near_dup_shards: int = Field(1, ge=1)
    """Database shards of the candidate search, one mapped task each (tasks/curate/
    knn_shards.py): 1 is one search in the flow process; more bound each task's memory by
    its shard and always search flat. The same pairs as the flat search at any count."""
    semantic_dedup: bool = False
    semantic_dedup_eps: float = Field(0.05, ge=0, le=2)
    semantic_dedup_clusters: int = Field(0, ge=0)
    """k-means clusters for SemDeDup; 0 picks sqrt(n)."""
    semantic_dedup_nprobe: int = Field(4, ge=1)
    """Clusters searched per embedding (1 is SemDeDup exactly: pairs within a cluster)."""
    faiss_device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the FAISS searches run (tasks/curate/faiss_device.py): near-duplicate
    candidates past near_dup_flat_max_rows (IVF; below it the search is exact matrix
    products on the CPU) and SemDeDup. auto = the GPUs when FAISS is a GPU build and sees
    one; gpu refuses to run without."""
    clip_score_checkpoint: str | None = None
    clip_score_model: str = "ViT-B-32"
    clip_score_min: float | None = None
    clip_score_top_fraction: float | None = Field(None, gt=0, le=1)
    decontaminate: bool = True
    gate: Literal["fail", "warn"] = "fail"
    gate_min_kept_fraction: float = Field(0.05, ge=0, le=1)
    gate_max_duplicate_fraction: float = Field(0.9, ge=0, le=1)
    gate_max_null_caption_fraction: float = Field(0.5, ge=0, le=1)
    """Largest fraction of input rows with a null or empty caption (a broken upstream)."""
    gate_min_median_caption_chars: int = Field(10, ge=0)
    """Smallest median caption length among kept rows."""
    duckdb_memory_limit: str | None = Field(None, pattern=r"(?i)^\d+(\.\d+)?\s*([KMGT]i?B|B)$")
    """DuckDB's ``memory_limit`` for the stage's connection ("2GB"); None leaves DuckDB's own
    (80 % of RAM). Sorts, joins and aggregates past it spill to ``duckdb_temp_dir``."""
    duckdb_temp_dir: str | None = None
    """Local folder DuckDB spills to; None: beside the stage's database, in its local
    temporary folder. Neither key changes the outputs (the config hash leaves them out)."""

    @field_validator("boilerplate_filename_pattern")
    @classmethod
    def _pattern_compiles_in_duckdb(cls, v: str) -> str:
        problem = _duckdb_regex_error(v)
        if problem:
            raise ValueError(f"boilerplate_filename_pattern {v!r} is no RE2 regex: {problem}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _renamed_language_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and "min_language_confidence" in data:
            raise ValueError(
                "min_language_confidence (langid's confidence in a language that is not "
                "allowed) was replaced by min_allowed_language_probability (two identifiers' "
                "mean probability of the allowed languages; drop below it, default 0.03)"
            )
        return data

    @field_validator("allowed_languages")
    @classmethod
    def _languages_identifiers_name(cls, v: list[str]) -> list[str]:
        codes = [code.strip().lower() for code in v]
        unknown = [v[i] for i, code in enumerate(codes) if code not in IDENTIFIED_LANGUAGES]
        if unknown:
            raise ValueError(
                f"allowed_languages {unknown} are not languages the language ID names, so "
                "every caption it judges would be dropped: use the codes of langid and "
                "fastText lid.176, ISO 639-1 where there is one, such as 'en' "
                f"(one of {', '.join(sorted(IDENTIFIED_LANGUAGES))})"
            )
        return codes

    @field_validator("url_blocklist")
    @classmethod
    def _blocklist_is_canonical_domains(cls, v: list[str]) -> list[str]:
        # As tasks.curate.features.url_host spells hosts; refuses what could never match.
        return [blocklist_domain(entry) for entry in v]

    @model_validator(mode="after")
    def _semantic_dedup_needs_embeddings(self) -> CurateConfig:
        if self.semantic_dedup and not self.clip_score_checkpoint:
            raise ValueError("semantic_dedup needs image embeddings: set clip_score_checkpoint")
        return self

    @model_validator(mode="after")
    def _clip_score_thresholds_need_a_scorer(self) -> CurateConfig:
        # Without a scorer every clip_score is NULL, and a threshold would silently keep all.
        thresholds = [name for name in ("clip_score_min", "clip_score_top_fraction")
                      if getattr(self, name) is not None]  # fmt: skip
        if thresholds and not self.clip_score_checkpoint:
            raise ValueError(
                f"{' and '.join(thresholds)} need CLIP scores: set clip_score_checkpoint"
            )
        return self


class ShardConfig(_Section):
    samples_per_shard: int = Field(1000, gt=0)
    seed: int = 0
    """Seed of the shuffle that spreads the kept samples over the output shards."""
    multipart_chunk_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    """S3 part size; a shard up to this size goes in one PUT."""
    upload_concurrency: int = Field(4, ge=1)
    """Parts of one shard uploaded in parallel."""
    upload_retries: int = Field(5, ge=0)
    """Retries of a whole shard upload after botocore's own per-request retries give up."""
    upload_backoff_seconds: float = Field(0.5, ge=0)
    """Wait before the first upload retry; doubled at each further retry."""


class EvalDataset(_Section):
    name: str
    path: str
    """Folder in CLIP_benchmark's WebDataset layout ({path}/{split}/*.tar), local or s3://."""
    task: Literal[
        "zeroshot_classification", "zeroshot_retrieval", "linear_probe", "prompt_tuning", "adapter"
    ] = "zeroshot_classification"
    split: str = "test"
    templates: list[str] | None = None
    """Prompts ("a photo of a {c}."); None means the dataset folder's
    zeroshot_classification_templates.txt."""
    train_split: str = "train"
    """linear_probe: the split the probe is fitted on."""
    fewshot_k: int | None = Field(None, gt=0)
    """linear_probe: fit on k train samples per class; None means all of them."""
    shots: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    """prompt_tuning / adapter: the K (train images per class) of each result."""

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ") or v.startswith("."):
            raise ValueError("must be non-empty, without slashes or spaces (it names a folder)")
        return v

    @field_validator("templates")
    @classmethod
    def _templates_name_the_class(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any("{c}" not in t for t in v)):
            raise ValueError("must be a non-empty list of prompts that each contain '{c}'")
        return v


class EvaluateConfig(_Section):
    model: str | None = None
    """Architecture name or OpenCLIP-format config JSON; None means the checkpoint's own
    model_config, else train.model."""
    checkpoint: str | None = None
    """None means the train stage's latest checkpoint."""
    vocab: str | None = None
    """BPE vocabulary; None means train.vocab for the train stage's checkpoint, CLIP's own
    vocabulary for any other checkpoint."""
    batch_size: int = Field(256, gt=0)
    workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    recall_k: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    """Retrieval: the k of each recall@k."""
    linear_probe_c: float | None = Field(None, gt=0)
    """Linear probe: inverse L2 regularisation strength of the logistic regression; None
    chooses it on a held-out part of the train split, then refits on the whole split."""
    linear_probe_validation: float = Field(0.2, gt=0, lt=1)
    """Linear probe: the fraction of the train split held out to choose C."""
    linear_probe_max_iter: int = Field(1000, gt=0)
    seed: int = 0
    """Linear probe, prompt tuning and adapter: few-shot sampling and solver seed."""
    prompt_tuning_epochs: int = Field(50, gt=0)
    """prompt_tuning: the learned contexts start as each template's words before the class
    name, so before training it is the zero-shot classifier (CoOp, model/adapt.py)."""
    prompt_tuning_lr: float = Field(0.002, gt=0)
    prompt_tuning_batch_size: int = Field(32, gt=0)
    prompt_tuning_kg_weight: float = Field(8.0, ge=0)
    """prompt_tuning: KgCoOp's weight on the distance of the learned class embeddings from
    the zero-shot ones (0: plain CoOp)."""
    prompt_tuning_class_specific: bool = True
    """prompt_tuning: one context per class (CoOp's CSC); false shares one by all classes."""
    adapter_alphas: list[float] = Field(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0], min_length=1
    )
    """adapter (Tip-Adapter): residual ratios searched on held-out train images."""
    adapter_betas: list[float] = Field(
        default_factory=lambda: [1.0, 3.0, 5.5, 10.0, 20.0], min_length=1
    )
    """adapter: cache sharpness values searched with the alphas."""
    datasets: list[EvalDataset] = Field(default_factory=list)
    search_index: bool = True
    """After evaluating, embed every training image (the shards) with the checkpoint into a
    FAISS index, ``eval/search/``: what ``clipflow inspect`` searches by text and by image."""
    search_batch_size: int = Field(512, gt=0)

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, v: list[EvalDataset]) -> list[EvalDataset]:
        names = [d.name for d in v]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"dataset names must be unique (they name folders): {duplicates}")
        return v

    @field_validator("recall_k")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every k must be at least 1")
        return v


class InspectConfig(_Section):
    """``clipflow inspect``: the local web app over the stage outputs. No stage reads it."""

    host: str = "127.0.0.1"
    """Address it binds; loopback unless you mean to share the data (captions and URLs come
    from the open web, and the app has no login)."""
    port: int = Field(8770, gt=0, lt=65536)
    url: str | None = None
    """Where the run's Prefect artifacts link to; None means ``http://{host}:{port}``."""
    page_size: int = Field(48, gt=0, le=500)
    """Samples per gallery page."""
    thumbnail_px: int = Field(160, gt=0)
    """Images larger than this (either side) are scaled down in memory before they are sent."""
    search_results: int = Field(24, gt=0, le=500)

    @property
    def base_url(self) -> str:
        return (self.url or f"http://{self.host}:{self.port}").rstrip("/")


class ExecutionConfig(_Section):
    """Where a stage's mapped per-shard tasks run (the Prefect task runner). It changes where
    work runs, never what it produces: no stage reads it, so it is in no config hash."""

    runner: Literal["local", "dask", "ray"] = "local"
    """local: threads of the flow process; dask: a Dask cluster (prefect-dask); ray: a Ray
    cluster (prefect-ray)."""
    address: str | None = None
    """An existing cluster to use (``tcp://scheduler:8786`` for Dask, ``ray://head:10001``
    for Ray); None starts a local one, on 127.0.0.1, for the mapped work of each stage run."""
    workers: int = Field(2, ge=1)
    """Worker processes (Dask) or CPUs (Ray) of a local cluster; unused with ``address``."""
    threads: int | None = Field(None, ge=1)
    """With runner local: how many of the flow process's threads run a stage's mapped tasks at
    once; None: the flow's own pool (Prefect's default: a thread per task, unless
    PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS caps it). Curate's per-shard features are
    mostly Python under the GIL: on the 2-core build machine the demo's six shards took
    15.5 s on six threads, 13.0 s on two and 8.2 s on one, so the demo sets 1. Tasks that
    wait on storage (S3) gain from more."""

    @model_validator(mode="after")
    def _address_needs_an_engine(self) -> ExecutionConfig:
        if self.runner == "local" and self.address is not None:
            raise ValueError("address names a Dask or Ray cluster: set runner to dask or ray")
        if self.runner != "local" and self.threads is not None:
            raise ValueError("threads sizes the local runner's pool: a Dask or Ray cluster "
                             "has workers")  # fmt: skip
        return self


class PipelineConfig(_Section):
    name: str = "clipflow"
    storage: StorageConfig = StorageConfig()
    crawl: CrawlConfig = CrawlConfig()
    download: DownloadConfig = DownloadConfig()
    curate: CurateConfig = CurateConfig()
    shard: ShardConfig = ShardConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    inspect: InspectConfig = InspectConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("must be non-empty without slashes or spaces")
        return v


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the fields."""


def load_config(source: str | Path | dict[str, Any] | PipelineConfig) -> PipelineConfig:
    """Load and validate a pipeline config from a YAML path, a dict, or a config object."""
    if isinstance(source, PipelineConfig):
        return source
    origin = "<dict>"
    if isinstance(source, str | Path):
        origin = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {source}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        base = Path(source).resolve().parent
        data = _resolve_relative_paths(data, base)
    else:
        data = source
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{origin}: invalid config: {problems}") from e


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths in a config file (storage.root, crawl.wat_files, evaluation
    dataset paths, checkpoints) are taken relative to the file's folder, not the caller's."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    data = dict(data)
    if isinstance(data.get("storage"), dict):
        data["storage"] = {**data["storage"], "root": resolve(data["storage"].get("root", "data"))}
    crawl = data.get("crawl")
    if isinstance(crawl, dict) and isinstance(crawl.get("wat_files"), list):
        data["crawl"] = {**crawl, "wat_files": [resolve(p) for p in crawl["wat_files"]]}
    evaluate = data.get("evaluate")
    if isinstance(evaluate, dict):
        evaluate = dict(evaluate)
        if evaluate.get("checkpoint"):
            evaluate["checkpoint"] = resolve(evaluate["checkpoint"])
        if isinstance(evaluate.get("datasets"), list):
            evaluate["datasets"] = [
                {**d, "path": resolve(d["path"])} if isinstance(d, dict) and "path" in d else d
                for d in evaluate["datasets"]
            ]
        data["evaluate"] = evaluate
    return data
