"""Report files served over HTTP (the great-expectations Data Docs, the plots): a requested
path is resolved under the storage root, inside the report folders only, or refused."""

from __future__ import annotations

import os
import posixpath
from urllib.parse import unquote

from tasks.core.storage import Storage

SERVED_FOLDERS = ("curate/report", "eval", "train")
"""Folders under the root whose files the app serves; nothing else is reachable."""
SERVED_SUFFIXES = (".html", ".css", ".js", ".png", ".gif", ".svg", ".ico", ".json", ".md", ".csv")


class PathRefused(ValueError):
    """A requested path that would leave the served folders (or the root)."""


def resolve(storage: Storage, requested: str) -> str:
    """The URI of ``requested`` (a path relative to the root, as the client sent it) when it
    names a file in ``SERVED_FOLDERS``; raises PathRefused otherwise.

    The path is decoded until it stops changing (``%252e`` is ``.`` twice over), and any
    ``..``, absolute part, backslash or NUL refuses it outright rather than normalising it.
    A local path must also stay under the root once symlinks are resolved."""
    path = requested
    for _ in range(4):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        raise PathRefused(f"{requested!r}: encoded too many times")
    parts = path.split("/")
    if any(p in ("..", ".") for p in parts) or "\\" in path or "\0" in path or path.startswith("/"):
        raise PathRefused(f"{requested!r}: not a plain path under the root")
    clean = posixpath.normpath(path)
    if not any(clean.startswith(folder + "/") for folder in SERVED_FOLDERS):
        raise PathRefused(f"{requested!r}: not in {', '.join(SERVED_FOLDERS)}")
    if not clean.lower().endswith(SERVED_SUFFIXES):
        raise PathRefused(f"{requested!r}: not a report file")
    uri = storage.uri(*clean.split("/"))
    if not storage.is_s3:
        root = os.path.realpath(storage.root)
        if not os.path.realpath(uri).startswith(root + os.sep):
            raise PathRefused(f"{requested!r}: leaves the storage root")
    return uri
