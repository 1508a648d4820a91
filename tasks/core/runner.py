"""Run a stage under its manifest: skip it when up to date, refuse it on a stale upstream,
retract its manifest before its body writes, and write the manifest last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from model.atomic import TEMP_MARK
from tasks.core.config import PipelineConfig
from tasks.core.lineage import (
    check_upstream,
    code_version,
    config_hash,
    config_reads,
    pipeline_status,
    upstream_digests,
)
from tasks.core.manifest import StageResult, invalidate, manifest_uri, read_manifest
from tasks.core.redact import redact
from tasks.core.storage import Storage
from tasks.stages import stage

log = logging.getLogger(__name__)


def run_stage(
    name: str,
    config: PipelineConfig,
    body: Callable[[Storage], StageResult],
    force: bool = False,
) -> dict[str, Any]:
    """Run ``body`` unless the stage is up to date; write its manifest last; return it."""
    storage = Storage(config.storage)
    statuses = pipeline_status(storage, config)
    if not force and statuses[name].done:
        manifest = read_manifest(storage, name)
        assert manifest is not None
        log.info("%s: up to date (manifest %s), skipped", name, manifest_uri(storage, name))
        return {**manifest, "skipped": True}
    check_upstream(statuses, config, [name])
    consumed = upstream_digests(storage, config, name)
    # Retract first: once the body starts writing, the old manifest no longer describes what
    # is on storage, and a kill -9 must leave the stage "not run", never "done".
    invalidate(storage, name)
    sweep_temporary_files(storage, name)
    started = time.time()
    result = body(storage)
    finished = time.time()
    for identity in stage(name).accounting:
        identity.check(name, result.counts)  # raises: no manifest for counts that lose samples
    # Secrets riding in URLs (userinfo, presigned queries) never reach a manifest, and so
    # never the artifacts and the UI built from it. The config hash is of the real values.
    manifest = redact({
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
    })  # fmt: skip
    storage.write_json(manifest_uri(storage, name), manifest)
    log.info("%s: done in %.1fs, counts %s", name, finished - started, result.counts)
    return {**manifest, "skipped": False}


def sweep_temporary_files(storage: Storage, name: str) -> None:
    """Remove what a killed run of the stage left half-written in its output folders (local
    roots; on S3 an unfinished upload is never visible)."""
    for folder in stage(name).outputs:
        for leftover in storage.glob(f"{folder}/**/*{TEMP_MARK}*"):
            log.info("%s: removing %s, left by a run that did not finish", name, leftover)
            storage.remove(leftover, recursive=True)
