"""Processes that die with their parent: no orphan of a killed stage may write its outputs.

img2dataset starts a pool of workers and a logger process. If the download stage is killed
(``kill -9``, an out-of-memory kill, a cancelled flow run), those children would live on:
a worker finishes its shard into ``{root}/download`` after the stage died, racing the rerun
that rewrites that shard. So img2dataset runs in a child that leads its own process group,
and every process of the tree that can write (that child, img2dataset's workers and logger)
asks the kernel to SIGKILL it the moment its parent dies: the death runs down the tree with
no code of the dying processes to run (a Python signal handler would wait while the main
thread is busy in C, and the worker's other threads would go on writing). A watchdog thread
in the child takes the group down where the kernel cannot (not Linux).
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
    die_with_parent(parent)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    fn(*args)


def _watch_parent(parent: int) -> None:
    """The fallback where the parent-death signal does not exist (or was lost)."""
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    _kill_group(0)


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process as soon as its parent dies (Linux; elsewhere the
    child's watchdog kills the group). ``parent``: the pid it must still have (default: the
    one it has now); if that one is already gone, this process dies at once.

    Linux sends the signal when the *thread* that started this process ends. For the workers
    a multiprocessing pool starts in place of retired ones (img2dataset's ``maxtasksperchild``)
    that is the pool's handler thread, which ends only when the pool is closed or terminated,
    after every result has come back: then the worker has nothing left to write."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if parent is None else parent
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group (0: this process's own)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signal.SIGKILL)
