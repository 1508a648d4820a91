"""Stage manifests: ``{root}/_manifests/{stage}.json``, written last, the "done" marker.

A manifest records what a stage ran on (the config values it read and their hash, its code
version, the digest of every upstream manifest it consumed) and what it produced (counts,
timings, output URIs). ``tasks.core.lineage`` decides from these whether a stage is up to
date; ``tasks.core.runner`` writes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tasks.core.storage import Storage


@dataclass
class StageResult:
    """What a stage function returns: counts (every input accounted for) and output URIs."""

    counts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def manifest_uri(storage: Storage, name: str) -> str:
    return storage.uri("_manifests", f"{name}.json")


def read_manifest(storage: Storage, name: str) -> dict[str, Any] | None:
    uri = manifest_uri(storage, name)
    return storage.read_json(uri) if storage.exists(uri) else None


def invalidate(storage: Storage, name: str) -> None:
    """Remove a stage's manifest, so it (and, through lineage, everything after it) reruns."""
    storage.remove(manifest_uri(storage, name))


def manifest_digest(manifest: dict[str, Any]) -> str:
    """What a downstream manifest records of an upstream one: a digest of all of it, so a
    rerun (new timings, counts or outputs) is a different upstream."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
