"""Shard verification: read every shard back against ``shards/manifest.json``.

``verify_shards`` names each missing, corrupt (tar error, wrong sha256 or size), miscounted
or unlisted shard and each sample found in two shards; ``clipflow verify CONFIG`` and the
end of the shard stage run it. ``check_member_name`` is the tar-member rule that both the
stage's input reading and this check apply.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from dataclasses import dataclass
from typing import IO, Any

from tasks.storage import Storage

_READ_CHUNK = 1024 * 1024


class UnsafeTarMember(ValueError):
    """A tar member that is not a regular file with a plain name; the message names both."""


def check_member_name(tar_uri: str, member: tarfile.TarInfo) -> None:
    """Refuse a tar member that is not a regular file with a plain name (``../../x``, ``/etc``,
    ``a/b``, links): img2dataset writes only flat names, anything else is tampering."""
    name = member.name
    if not name or name.startswith("/") or "/" in name or "\\" in name or name in {".", ".."}:
        raise UnsafeTarMember(f"{tar_uri}: refusing tar member {name!r}: not a plain file name")
    if not member.isreg():
        raise UnsafeTarMember(f"{tar_uri}: refusing tar member {name!r}: not a regular file")


@dataclass
class VerifyReport:
    """What ``verify_shards`` found: one problem per bad shard, named."""

    shards: int
    samples: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class _HashingReader:
    """A read-only stream that hashes and counts what is read through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source, self.sha256, self.bytes = source, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(_READ_CHUNK):
            pass


def _read_shard(storage: Storage, uri: str) -> tuple[list[str], int, str]:
    """Stream one shard: (sample keys in order, bytes, sha256); raises on a broken tar."""
    keys: list[str] = []
    with storage.open(uri, "rb") as raw:
        stream = _HashingReader(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                check_member_name(uri, member)
                key = member.name.partition(".")[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
        stream.drain()
    return keys, stream.bytes, stream.sha256.hexdigest()


def _check_entry(storage: Storage, entry: dict[str, Any], seen: set[str]) -> list[str]:
    name = entry["name"]
    uri = storage.uri("shards", name)
    if not storage.exists(uri):
        return [f"{name}: missing"]
    try:
        keys, size, sha256 = _read_shard(storage, uri)
    except (tarfile.TarError, EOFError, OSError, UnsafeTarMember) as error:
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
