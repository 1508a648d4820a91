"""Test-only: SIGKILL a stage at a chosen point in its output (tests/e2e/test_kill_resume.py).

Python imports this module at start-up in every process whose ``PYTHONPATH`` holds this
folder: the ``clipflow`` process and what it starts (img2dataset's spawned workers, torchrun
and its ranks). It does nothing unless ``CLIPFLOW_KILL_MATCH`` is set.

- ``CLIPFLOW_KILL_MATCH``: a regex searched in the path of each file a process publishes:
  the target of ``os.replace`` / ``os.rename`` (every atomic write in clipflow, checkpoints
  included) and img2dataset's per-shard ``NNNNN_stats.json`` (img2dataset writes its shards
  in place, and the stats file, written last, is what marks a shard done); also
  ``{shard input} (result received)`` when img2dataset's parent process gets a shard's
  result.
- ``CLIPFLOW_KILL_AT``: the N-th matching publish of one process fires (default 1), right
  after the file is in place.
- ``CLIPFLOW_KILL_MARKER``: where the firing process first writes the path it fired on, so
  the test can tell a kill at that point from a crash anywhere else.

Firing SIGKILLs the stage process (the first process that loaded this module), then every
process between it and the firing one (torchrun's agent), then the firing process itself:
the whole stage dies as under ``kill -9``, with no handler, ``finally`` or ``atexit`` run.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from importlib.abc import MetaPathFinder
from types import ModuleType

_MATCH = os.environ.get("CLIPFLOW_KILL_MATCH")
_STAGE_PID_VAR = "CLIPFLOW_KILL_STAGE_PID"


def _ancestors_up_to(stop: int) -> list[int]:
    """This process's ancestors, nearest first, up to and including ``stop``; empty when
    ``stop`` is not one of them."""
    chain, pid = [], os.getpid()
    while pid > 1 and pid != stop:
        with open(f"/proc/{pid}/stat") as f:
            # Field 4 is the parent pid; the command name (field 2) may hold spaces.
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain if pid == stop else []


class _Killer:
    def __init__(self, pattern: str, at: int, marker: str | None) -> None:
        self.pattern = re.compile(pattern)
        self.at = at
        self.marker = marker
        self.seen = 0
        self.lock = threading.Lock()

    def published(self, path: str | bytes | os.PathLike) -> None:
        """Count a file just put in place; fire on the ``at``-th that matches."""
        name = os.fsdecode(path)
        if not self.pattern.search(name):
            return
        with self.lock:
            self.seen += 1
            if self.seen == self.at:
                self.fire(name)

    def fire(self, path: str) -> None:
        if self.marker:
            with open(self.marker, "w") as f:
                f.write(f"{os.getpid()} {path}\n")
                f.flush()
                os.fsync(f.fileno())
        stage = int(os.environ[_STAGE_PID_VAR])
        chain = _ancestors_up_to(stage)
        for pid in [stage, *chain[:-1]] if chain else [stage]:
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


class _PatchAfterImport(MetaPathFinder):
    """Run ``patches[name](module)`` right after module ``name`` is first imported."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self.patches = patches

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.patches:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        exec_module, patch = spec.loader.exec_module, self.patches[fullname]

        def exec_and_patch(module) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _install(killer: _Killer) -> None:
    replace, rename = os.replace, os.rename

    def watched_replace(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        killer.published(dst)

    def watched_rename(src, dst, *args, **kwargs):
        rename(src, dst, *args, **kwargs)
        killer.published(dst)

    os.replace, os.rename = watched_replace, watched_rename
    sys.meta_path.insert(
        0,
        _PatchAfterImport(
            {
                "img2dataset.downloader": _watch_img2dataset_stats(killer),
                "img2dataset.distributor": _watch_img2dataset_results(killer),
            }
        ),
    )


def _watch_img2dataset_stats(killer: _Killer) -> Callable[[ModuleType], None]:
    """In img2dataset's workers: each shard's ``NNNNN_stats.json``, once written."""

    def patch(module: ModuleType) -> None:
        write_stats = module.write_stats

        def watched_write_stats(output_folder, shard_id, *args, **kwargs):
            write_stats(output_folder, shard_id, *args, **kwargs)
            width = kwargs.get("oom_shard_count", args[-1] if args else 5)
            killer.published(f"{output_folder}/{shard_id:0{width}d}_stats.json")

        module.write_stats = watched_write_stats

    return patch


def _watch_img2dataset_results(killer: _Killer) -> Callable[[ModuleType], None]:
    """In img2dataset's parent: ``{shard_file} (result received)`` as each shard's result
    reaches it (its worker has by then taken the next shard), where ``shard_file`` is the
    worker's input (``{output_folder}/_tmp/N.feather``)."""

    def patch(module: ModuleType) -> None:
        progress = module.tqdm

        def watched_progress(results, *args, **kwargs):
            for status, row in progress(results, *args, **kwargs):
                killer.published(f"{row[1]} (result received)")
                yield status, row

        module.tqdm = watched_progress

    return patch


if _MATCH:
    os.environ.setdefault(_STAGE_PID_VAR, str(os.getpid()))
    _install(
        _Killer(
            _MATCH,
            int(os.environ.get("CLIPFLOW_KILL_AT", "1")),
            os.environ.get("CLIPFLOW_KILL_MARKER"),
        )
    )
