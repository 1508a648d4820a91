"""Stage manifests: ``{root}/_manifests/{stage}.json``, written last, the "done" marker.

A manifest records what a stage ran on (the config values it read and their hash, its code
version, the digest of every upstream manifest it consumed) and what it produced (counts,
timings, output URIs). ``tasks.core.lineage`` decides from these whether it is up to date.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks.core.config import PipelineConfig
from tasks.core.lineage import (
    check_upstream,
    code_version,
    config_hash,
    config_reads,
    manifest_uri,
    pipeline_status,
    read_manifest,
    upstream_digests,
)
from tasks.core.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["StageResult", "invalidate", "manifest_uri", "read_manifest", "run_stage"]


@dataclass
class StageResult:
    """What a stage function returns: counts (every input accounted for) and output URIs."""

    counts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def run_stage(
    name: str,
    config: PipelineConfig,
    body: Callable[[Storage], StageResult],
    force: bool = False,
) -> dict[str, Any]:
    """Run ``body`` unless the stage is up to date; write its manifest last; return it."""
    storage = Storage(config.storage)
    status = pipeline_status(storage, config)[name]
    if not force and status.done:
        manifest = read_manifest(storage, name)
        assert manifest is not None
        log.info("%s: up to date (manifest %s), skipped", name, manifest_uri(storage, name))
        return {**manifest, "skipped": True}
    check_upstream(storage, config, [name])
    consumed = upstream_digests(storage, config, name)
    # Retract first: once the body starts writing, the old manifest no longer describes what
    # is on storage, and a kill -9 must leave the stage "not run", never "done".
    invalidate(storage, name)
    started = time.time()
    result = body(storage)
    finished = time.time()
    manifest = {
        "stage": name,
        "config": config_reads(config, name),
        "config_hash": config_hash(config, name),
        "code_version": code_version(name),
        "upstream": consumed,
        "counts": result.counts,
        "outputs": result.outputs,
        "extra": result.extra,
        "timings": {"started": started, "finished": finished, "seconds": finished - started},
        "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
    }
    storage.write_json(manifest_uri(storage, name), manifest)
    log.info("%s: done in %.1fs, counts %s", name, finished - started, result.counts)
    return {**manifest, "skipped": False}


def invalidate(storage: Storage, name: str) -> None:
    """Remove a stage's manifest, so it (and, through lineage, everything after it) reruns."""
    storage.remove(manifest_uri(storage, name))
