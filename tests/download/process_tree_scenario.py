"""A stage process for ``test_process_tree.py``: it runs ``run_in_process_tree``, whose child
starts one worker like img2dataset's (``die_with_parent`` armed); the worker's main thread is
busy in C code (zlib on 32 MiB) while a second thread appends a line to ``OUT`` every 10 ms,
as img2dataset's workers write a shard while their main thread resizes an image.

Run as ``python process_tree_scenario.py OUT``; the test kills processes and watches ``OUT``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import zlib

from tasks.download.process_tree import die_with_parent, run_in_process_tree


def _append_forever(out: str) -> None:
    while True:
        with open(out, "a") as f:
            f.write(f"{os.getpid()} {time.monotonic()}\n")
        time.sleep(0.01)


def worker(out: str) -> None:
    die_with_parent()
    threading.Thread(target=_append_forever, args=(out,), daemon=True).start()
    blob = os.urandom(32 << 20)
    while True:  # the main thread stays in C, where a Python signal handler cannot run
        zlib.compress(blob, 9)


def child(out: str) -> None:
    with open(out + ".child", "w") as f:
        f.write(str(os.getpid()))
    proc = multiprocessing.get_context("spawn").Process(target=worker, args=(out,))
    proc.start()
    proc.join()


if __name__ == "__main__":
    run_in_process_tree(child, sys.argv[1])
