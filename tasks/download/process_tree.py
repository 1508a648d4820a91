"""Processes that die with their parent: no orphan of a killed stage may write its outputs.

img2dataset starts a pool of workers and a logger process. If the download stage is killed
(``kill -9``, an out-of-memory kill, a cancelled flow run), those children would live on:
a worker finishes its shard into ``{root}/download`` after the stage died, racing the rerun
that rewrites that shard. So img2dataset runs in a child that leads its own process group,
and the processes of that tree ask the kernel to SIGKILL them the moment their parent dies:
the death runs down the tree with no code of the dying processes to run. (A Python signal
handler is not enough: it waits while the main thread is busy in C code, and the process's
other threads go on writing meanwhile.) A reaper process in the group, forked by the child,
SIGKILLs the whole group when the child dies, for the processes that are not armed (yet). A
watchdog thread in the child takes the group down where the kernel cannot (not Linux).

Linux sends the parent-death signal when the *thread* that started a process ends, not only
when the parent process dies. That is safe for the child (the stage's thread waits for it)
and img2dataset's logger (started by the child's main thread), but a multiprocessing pool
starts replacement workers (img2dataset's ``maxtasksperchild``) from its handler thread,
which ends when the pool is terminated; a worker killed then, idle in the task queue's lock,
would hang the pool's shutdown. So a pool worker is armed with SIGKILL only while it writes
a shard (``killed_with_parent``), and between shards dies through a handler that first checks
that the parent process is really gone.
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
from collections.abc import Callable, Iterator
from typing import Any

WORKER_START_METHOD = "fork"
"""How img2dataset's processes (pool workers, logger) start inside the child: forked from
it, ready, where img2dataset's own ``spawn`` would import img2dataset, and torch through
webdataset, again in each (~3.5 s of CPU apiece). The child holds no lock in another
thread when it forks: its only other thread, the watchdog, just polls and sleeps."""
WORKER_CONTEXT: Any = multiprocessing.get_context(WORKER_START_METHOD)
"""The multiprocessing context of that start method, for img2dataset's pool and logger."""
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.1
_BETWEEN_TASKS_SIGNAL = signal.SIGUSR1
_REAPER_SIGNAL = signal.SIGUSR2


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
    _start_reaper()  # before any thread starts: a fork of a single thread
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    fn(*args)


def _start_reaper() -> None:
    """Fork a process that SIGKILLs this process's group the moment this process dies. The
    processes of the tree that arm themselves die with their parent; this takes down the
    ones that cannot be armed in time: a pool worker is armed when it takes a task, and one
    still waiting for its first (there are fewer shards left than processes, or it replaces
    a worker) holds its own task queue open and would wait for ever. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    leader = os.getpid()
    if os.fork() != 0:
        return
    try:  # the reaper: no Python code of the tree, none of its pipes held open
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.signal(_REAPER_SIGNAL, lambda signum, frame: _kill_group(0))
        _set_death_signal(_REAPER_SIGNAL)
        if os.getppid() != leader:  # the leader died before the signal was armed
            _kill_group(0)
        while True:
            signal.pause()
    finally:
        os._exit(0)


def _watch_parent(parent: int) -> None:
    """The fallback where the parent-death signal does not exist (or was lost)."""
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    _kill_group(0)


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process as soon as the thread that started it ends
    (Linux; elsewhere the child's watchdog kills the group). ``parent``: the pid it must
    still have (default: the one it has now); if that one is gone, this process dies now."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if parent is None else parent
    _set_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def killed_with_parent(ancestor: int | None = None) -> Iterator[None]:
    """For a pool worker: inside the block (while it writes), SIGKILL from the kernel when
    its parent dies; after it, a handler that SIGKILLs this process only if the parent
    process is gone (not merely the pool thread that started it). Main thread only.

    ``ancestor``: the pid of the process that started the engine, where the parent is the
    engine's (Spark's Python daemon, Ray's raylet), which dies after it. A worker that starts
    a task once its parent is already gone is an orphan that cannot tell; so if ``ancestor``
    is gone once the signal is armed, this process dies now (the parent was alive when the
    signal was armed, as it dies after the ancestor)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    parent = os.getppid()
    _set_death_signal(signal.SIGKILL)
    if os.getppid() != parent or (ancestor is not None and not _alive(ancestor)):
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        yield
    finally:

        def on_signal(signum: int, frame: Any) -> None:
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

        signal.signal(_BETWEEN_TASKS_SIGNAL, on_signal)
        _set_death_signal(_BETWEEN_TASKS_SIGNAL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _set_death_signal(signum: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group (0: this process's own)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signal.SIGKILL)
