"""Stage manifests: ``{root}/_manifests/{stage}.json``, written last, the "done" marker.

A manifest records what a stage ran on (config hash, input fingerprint, code version) and
what it produced (counts, timings, output URIs). A stage whose recorded fingerprints equal
the current ones is skipped unless forced.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.core.config import STAGES, PipelineConfig
from tasks.core.storage import Storage

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parent.parent
# The code a stage's output depends on: a change in any of these files or folders reruns it.
_MODEL_CORE = (
    "model/__init__.py", "model/clip.py", "model/config.py", "model/configs",
    "model/transformer.py", "model/tokenizer.py", "model/transforms.py", "model/checkpoint.py",
)  # fmt: skip
_STAGE_CODE: dict[str, tuple[str, ...]] = {
    "crawl": ("tasks/crawl/stage.py", "tasks/crawl/site_crawler.py", "tasks/crawl/html_extract.py", "tasks/crawl/wat.py",
              "tasks/core/safe_http.py", "tasks/crawl/safe_resolver.py"),
    "download": ("tasks/download/stage.py", "tasks/download/fetch.py", "tasks/core/safe_http.py"),
    "curate": ("tasks/curate/stage.py", "tasks/curate/features.py", "tasks/curate/rules.py", "tasks/curate/dedup.py",
               "tasks/curate/phash.py", "tasks/curate/language.py", "tasks/curate/gate.py", "sql"),
    "shard": ("tasks/shard/stage.py", "tasks/shard/verify.py"),
    "train": (*_MODEL_CORE, "model/loss.py", "model/data.py", "model/train.py",
              "model/train_config.py", "model/train_checkpoint.py", "tasks/train/launcher.py"),
    "evaluate": (*_MODEL_CORE, "model/zeroshot.py", "model/retrieval.py",
                 "model/linear_probe.py", "model/eval_data.py", "tasks/evaluate/stage.py"),
}  # fmt: skip


def code_version(stage: str) -> str:
    """sha256 over the source files a stage's output depends on (missing files are skipped)."""
    h = hashlib.sha256()
    for rel in _STAGE_CODE[stage]:
        path = _REPO / rel
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and f.suffix in {".py", ".sql", ".json"}:
                h.update(str(f.relative_to(_REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class StageResult:
    """What a stage function returns: counts (every input accounted for) and output URIs."""

    counts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def manifest_uri(storage: Storage, stage: str) -> str:
    return storage.uri("_manifests", f"{stage}.json")


def read_manifest(storage: Storage, stage: str) -> dict[str, Any] | None:
    uri = manifest_uri(storage, stage)
    return storage.read_json(uri) if storage.exists(uri) else None


def input_fingerprint(storage: Storage, config: PipelineConfig, stage: str) -> str:
    """What a stage reads: the upstream manifest's content (which names its outputs and their
    fingerprints), or for crawl the seed and WAT lists already in its config hash."""
    index = STAGES.index(stage)
    if index == 0:
        return "config"
    upstream = read_manifest(storage, STAGES[index - 1])
    if upstream is None:
        return "missing"
    keys = ("stage", "config_hash", "input_fingerprint", "code_version", "counts", "outputs")
    digest = hashlib.sha256(repr(sorted((k, repr(upstream.get(k))) for k in keys)).encode())
    return digest.hexdigest()[:16]


def is_up_to_date(storage: Storage, config: PipelineConfig, stage: str) -> bool:
    """True when the stage's manifest matches its current config, inputs and code."""
    current = read_manifest(storage, stage)
    return current is not None and (
        current.get("config_hash") == config.section_hash(stage)
        and current.get("input_fingerprint") == input_fingerprint(storage, config, stage)
        and current.get("code_version") == code_version(stage)
    )


def _required_upstream(stage: str, config: PipelineConfig) -> str | None:
    """The stage whose output this one reads; evaluating a given checkpoint needs none."""
    if STAGES.index(stage) == 0 or (stage == "evaluate" and config.evaluate.checkpoint):
        return None
    return STAGES[STAGES.index(stage) - 1]


def run_stage(
    stage: str,
    config: PipelineConfig,
    body: Callable[[Storage], StageResult],
    force: bool = False,
) -> dict[str, Any]:
    """Run ``body`` unless the stage is up to date; write its manifest last; return it."""
    storage = Storage(config.storage)
    if not force and is_up_to_date(storage, config, stage):
        manifest = read_manifest(storage, stage)
        assert manifest is not None
        log.info("%s: up to date (manifest %s), skipped", stage, manifest_uri(storage, stage))
        return {**manifest, "skipped": True}
    upstream = _required_upstream(stage, config)
    if upstream is not None and read_manifest(storage, upstream) is None:
        raise RuntimeError(
            f"{stage}: upstream stage {upstream!r} has not finished "
            f"(no {manifest_uri(storage, upstream)}); run it first"
        )
    # Retract first: once the body starts writing, the old manifest no longer describes what
    # is on storage, and a kill -9 must leave the stage "not run", never "done".
    invalidate(storage, stage)
    started = time.time()
    result = body(storage)
    finished = time.time()
    manifest = {
        "stage": stage,
        "config_hash": config.section_hash(stage),
        "input_fingerprint": input_fingerprint(storage, config, stage),
        "code_version": code_version(stage),
        "counts": result.counts,
        "outputs": result.outputs,
        "extra": result.extra,
        "timings": {"started": started, "finished": finished, "seconds": finished - started},
        "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
    }
    storage.write_json(manifest_uri(storage, stage), manifest)
    log.info("%s: done in %.1fs, counts %s", stage, finished - started, result.counts)
    return {**manifest, "skipped": False}


def invalidate(storage: Storage, stage: str) -> None:
    """Remove a stage's manifest, so it (and, through fingerprints, everything after it) reruns."""
    storage.remove(manifest_uri(storage, stage))
