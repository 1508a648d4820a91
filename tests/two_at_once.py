"""Run one function in two forked processes released together by a barrier: for tests of
what two `clipflow demo` runs (or two test processes) do at the same moment."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def _after(start: Any, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    start.wait()
    target(*args)


def exit_codes_of_two_at_once(target: Callable[..., None], *args: Any) -> list[int | None]:
    """``target(*args)`` in two forked processes started together; their exit codes."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    children = [ctx.Process(target=_after, args=(start, target, args)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    codes = [child.exitcode for child in children]  # None: still running after 120 s
    for child in children:
        if child.is_alive():  # a hung child fails the test; it must not outlive it
            child.kill()
            child.join()
    return codes
