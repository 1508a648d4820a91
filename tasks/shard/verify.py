"""Shard verification: read every shard back against ``shards/manifest.json``.

``verify_shards`` names each missing, corrupt (tar error, wrong sha256 or size), miscounted
or unlisted shard and each sample found in two shards; ``clipflow verify CONFIG`` and the
end of the shard stage run it. Shards are read with ``model.tario.IndexedTar``, which applies
the same member-name rule as the stage's reading of its input.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from dataclasses import dataclass
from typing import Any

from model.tario import IndexedTar, TarReadError, UnsafeTarMember
from tasks.core.storage import Storage

_READ_CHUNK = 1024 * 1024


@dataclass
class VerifyReport:
    """What ``verify_shards`` found: one problem per bad shard, named."""

    shards: int
    samples: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _sha256_and_size(path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _read_shard(storage: Storage, uri: str) -> tuple[list[str], int, str]:
    """One shard read back: (sample keys in order, bytes, sha256); raises on a broken tar.

    An S3 shard is fetched to a temporary file first: one GET, then the header walk seeks.
    """
    with tempfile.TemporaryDirectory(prefix="clipflow-verify-") as tmp:
        path = uri
        if storage.is_s3:
            path = os.path.join(tmp, posixpath.basename(uri))
            storage.fs.get_file(uri, path)
        sha256, size = _sha256_and_size(path)
        with IndexedTar(path, uri) as tar:
            keys = list(tar.index)
    return keys, size, sha256


def _check_entry(storage: Storage, entry: dict[str, Any], seen: set[str]) -> list[str]:
    name = entry["name"]
    uri = storage.uri("shards", name)
    if not storage.exists(uri):
        return [f"{name}: missing"]
    try:
        keys, size, sha256 = _read_shard(storage, uri)
    except (TarReadError, OSError, UnsafeTarMember) as error:
        return [f"{name}: corrupt ({error})"]
    problems = []
    if sha256 != entry["sha256"] or size != entry["bytes"]:
        problems.append(f"{name}: corrupt (sha256/bytes differ from manifest.json)")
    if len(keys) != entry["count"]:
        problems.append(f"{name}: {len(keys)} samples, manifest.json says {entry['count']}")
    doubled = [k for k in keys if k in seen]
    if doubled:
        problems.append(f"{name}: samples already in another shard: {doubled[:5]}")
    seen.update(keys)
    return problems


def verify_shards(storage: Storage) -> VerifyReport:
    """Read every shard back; check counts, bytes and sha256 against ``manifest.json``, and
    ``sizes.json`` against it; name every missing, corrupt or unlisted shard."""
    manifest_path = storage.uri("shards", "manifest.json")
    if not storage.exists(manifest_path):
        return VerifyReport(0, 0, [f"{manifest_path}: missing"])
    manifest = storage.read_json(manifest_path)
    entries = manifest["shards"]
    problems: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        problems += _check_entry(storage, entry, seen)
    sizes_path = storage.uri("shards", "sizes.json")
    expected_sizes = {e["name"]: e["count"] for e in entries}
    if not storage.exists(sizes_path) or storage.read_json(sizes_path) != expected_sizes:
        problems.append(f"{sizes_path}: missing or different from manifest.json")
    kept = manifest.get("curate_manifest", {}).get("kept")
    if not problems and kept is not None and len(seen) != kept:  # else a bad shard explains it
        problems.append(f"{len(seen)} distinct samples in the shards, but curate kept {kept}")
    listed = set(expected_sizes)
    for uri in storage.glob("shards/*.tar"):
        if posixpath.basename(uri) not in listed:
            problems.append(f"{posixpath.basename(uri)}: not listed in manifest.json")
    return VerifyReport(len(entries), len(seen), problems)
