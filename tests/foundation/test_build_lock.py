"""demo.build_lock: one builder at a time of what the demo builds into .cache/."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path

from demo.build_lock import one_builder


def _die_holding(path: Path) -> None:
    with one_builder(path):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_builder_killed_while_building_does_not_block_the_next(tmp_path):
    out = tmp_path / "set"
    child = multiprocessing.get_context("fork").Process(target=_die_holding, args=(out,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    done = threading.Event()

    def build() -> None:
        with one_builder(out):
            done.set()

    threading.Thread(target=build, daemon=True).start()
    assert done.wait(timeout=10)  # the kernel dropped the dead holder's lock


def test_a_second_builder_waits_for_the_first(tmp_path):
    out, order = tmp_path / "set", []
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with one_builder(out):
            holding.set()
            release.wait(timeout=10)
            order.append("first done")

    def second() -> None:
        holding.wait(timeout=10)
        with one_builder(out):  # flock locks per open file: threads exclude each other too
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    holding.wait(timeout=10)
    threading.Event().wait(0.3)
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["first done", "second in"]
