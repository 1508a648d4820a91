"""Stage processes for ``test_process_tree.py``; each runs ``run_in_process_tree`` as the
download stage runs img2dataset. ``python process_tree_scenario.py MODE OUT``:

- ``writer``: the child starts one worker like img2dataset's, inside ``killed_with_parent``;
  the worker's main thread is busy in one long C call (PBKDF2, ~10 s) while a second thread appends
  a line to ``OUT`` every 10 ms, as img2dataset's workers write a shard while their main
  thread resizes an image. The test kills processes and watches ``OUT``.
- ``pool``: the child maps 6 tasks over a 1-process pool with ``maxtasksperchild=5``
  as img2dataset's (the pool's handler thread starts the worker for the 6th, which then
  waits for more) and terminates it as img2dataset's distributor does; then writes
  ``OUT``. The test checks that this ends.

Every process starts as the stage starts img2dataset's (``WORKER_START_METHOD``).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

from tasks.download.process_tree import (
    WORKER_START_METHOD,
    killed_with_parent,
    run_in_process_tree,
)


def _append_forever(out: str) -> None:
    while True:
        with open(out, "a") as f:
            f.write(f"{os.getpid()} {time.monotonic()}\n")
        time.sleep(0.01)


def writer_worker(out: str) -> None:
    with killed_with_parent():
        threading.Thread(target=_append_forever, args=(out,), daemon=True).start()
        while True:  # the main thread stays in C, where a Python signal handler cannot run
            hashlib.pbkdf2_hmac("sha256", b"clipflow", b"salt", 50_000_000)


def writer(out: str) -> None:
    with open(out + ".child", "w") as f:
        f.write(str(os.getpid()))
    proc = multiprocessing.get_context(WORKER_START_METHOD).Process(
        target=writer_worker, args=(out,)
    )
    proc.start()
    proc.join()


def pool_task(i: int) -> int:
    with killed_with_parent():
        return i * i


def pool(out: str) -> None:
    with multiprocessing.get_context(WORKER_START_METHOD).Pool(1, maxtasksperchild=5) as workers:
        squares = list(workers.imap_unordered(pool_task, range(6)))
        workers.terminate()
        workers.join()
    with open(out, "w") as f:
        f.write(" ".join(map(str, sorted(squares))))


def unarmed(out: str) -> None:
    proc = multiprocessing.get_context(WORKER_START_METHOD).Process(target=time.sleep, args=(600,))
    proc.start()
    with open(out, "w") as f:
        f.write(str(proc.pid))
    proc.join()


def _worker_ready(out: str) -> None:
    with open(out + ".ready", "a") as f:
        f.write(f"{os.getpid()}\n")


def idle_pool(out: str) -> None:
    with multiprocessing.get_context(WORKER_START_METHOD).Pool(2, _worker_ready, (out,)) as workers:
        workers.map(pool_task, [3])  # one worker takes the task; the other never gets one
        while len(Path(out + ".ready").read_text().split()) < 2:  # both wait for tasks
            time.sleep(0.05)
        with open(out, "w") as f:
            f.write(" ".join(str(p.pid) for p in multiprocessing.active_children()))
        time.sleep(600)


if __name__ == "__main__":
    modes = {"writer": writer, "pool": pool, "idle_pool": idle_pool, "unarmed": unarmed}
    run_in_process_tree(modes[sys.argv[1]], sys.argv[2])
