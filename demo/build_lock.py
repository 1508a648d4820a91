"""One builder at a time for what the demo builds once and reuses (the demo web, the built-in
benchmark sets): two `clipflow demo` runs in one checkout, or two test processes, share
``.cache/``."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def one_builder(path: Path) -> Iterator[None]:
    """Hold ``{path}.lock`` exclusively (``flock``): one process at a time checks and builds
    ``path``, and one that waited finds the build done. The lock file stays (it is empty); the
    kernel releases the lock when its holder exits, killed or not."""
    lock = path.with_name(f"{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is building it; waiting for it to finish", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
