"""Processes that die with their parent: no orphan of a killed stage may write its outputs.

img2dataset starts a pool of workers and a logger process. If the download stage is killed
(``kill -9``, an out-of-memory kill, a cancelled flow run), those children would live on:
a worker finishes its shard into ``{root}/download`` after the stage died, racing the rerun
that rewrites that shard. So img2dataset runs in a child that leads its own process group
and takes the group down as soon as its parent is gone (at once by the kernel's parent-death
signal on Linux, within a poll interval by a watchdog thread everywhere), and img2dataset's
own processes call ``die_with_parent`` when they start, so that they go too when that child
is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.1
_DEATH_SIGNAL = signal.SIGUSR1


class ChildFailed(RuntimeError):
    """The child exited with an error; its traceback is in the log above."""


def run_in_process_tree(fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` in a spawned child (its own process group); raises ChildFailed naming
    the exit code when it fails. ``fn`` and ``args`` must pickle."""
    child = multiprocessing.get_context("spawn").Process(
        target=_child_main, args=(os.getpid(), fn, args), name=f"clipflow-{fn.__name__}"
    )
    child.start()
    assert child.pid is not None
    try:
        child.join()
    finally:
        if child.is_alive():  # this process is being interrupted: take the tree down
            _kill_group(child.pid)
            child.join()
    if child.exitcode != 0:
        raise ChildFailed(f"{fn.__name__} failed in its process (exit code {child.exitcode})")


def _child_main(parent: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.setpgid(0, 0)  # every process fn starts joins this group
    die_with_parent(on_death=lambda: _kill_group(0))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    fn(*args)


def _watch_parent(parent: int) -> None:
    """The fallback where the parent-death signal does not exist (or was lost)."""
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    _kill_group(0)


def die_with_parent(on_death: Callable[[], None] | None = None) -> None:
    """Call ``on_death`` (default: SIGKILL this process) as soon as the parent process dies.

    Linux's parent-death signal fires when the *thread* that started this process ends,
    which for a multiprocessing pool's replacement workers is the pool's handler thread, not
    the parent's death; so the handler acts only once the parent is really gone. Call it
    from the process's main thread (signal handlers live there)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    die = on_death or (lambda: os.kill(os.getpid(), signal.SIGKILL))

    def on_signal(signum: int, frame: Any) -> None:
        if os.getppid() != parent:
            die()

    signal.signal(_DEATH_SIGNAL, on_signal)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _DEATH_SIGNAL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        die()


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group (0: this process's own)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signal.SIGKILL)
