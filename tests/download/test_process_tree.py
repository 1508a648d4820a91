"""The download stage's process tree dies with the stage, at once: after ``kill -9`` nothing
it started may write another byte, even a worker whose main thread is busy in C code; and
a pool that ends normally is not killed on the way (which would hang its shutdown)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_kill_resume import DEATH_WITHIN, wait_for_session_to_end

SCENARIO = Path(__file__).with_name("process_tree_scenario.py")
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _start(out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), "writer", str(out)], env=_env(), start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.stat().st_size > 0):  # the worker is writing
        assert proc.poll() is None, f"the scenario exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the worker never started writing"
        time.sleep(0.05)
    time.sleep(0.3)  # its main thread is in PBKDF2 by now
    return proc


@pytest.mark.parametrize("killed", ["stage", "stage and child"])
def test_nothing_writes_after_the_stage_is_killed(tmp_path: Path, killed: str) -> None:
    """``stage``: ``kill -9`` of the stage alone. ``stage and child``: the child dies with it,
    as when the kill reaches both (an OOM kill of the group, the kill-resume test's killer):
    then the worker alone must notice, with no Python code of its own to run. The tree dies
    in steps (each parent's death signals its children), so the worker may write in those
    milliseconds; then it must be gone, within DEATH_WITHIN, and write nothing more."""
    out = tmp_path / "written.log"
    proc = _start(out)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        if killed == "stage and child":
            os.kill(int((tmp_path / "written.log.child").read_text()), signal.SIGKILL)
        proc.wait()
        died = time.monotonic()
        left = wait_for_session_to_end(proc.pid, 5)
        took = time.monotonic() - died
        size_once_gone = out.stat().st_size
        time.sleep(1.0)
        assert not left, f"still running 5 s after the stage died: {left}"
        assert took < DEATH_WITHIN, f"the worker outlived the stage by {took:.2f} s"
        written = out.read_text()[size_once_gone:].splitlines()
        assert not written, f"{len(written)} lines written after every process had gone"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["unarmed", "idle_pool"])
def test_a_process_that_is_not_armed_dies_with_the_stage(tmp_path: Path, mode: str) -> None:
    """``unarmed``: a process of the tree that never arms a death signal. ``idle_pool``: a
    pool worker is armed when it takes a task; one still waiting for its first is not, and it
    holds its own task queue open. Both lived on after ``kill -9`` of the stage (orphans of
    ~700 MB each were found alive an hour after a kill-resume test); the child's reaper
    takes them down. (Without it, ``unarmed`` failed in every run, ``idle_pool`` in 3 of 8.)"""
    out = tmp_path / "started.txt"
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), mode, str(out)], env=_env(), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size > 0):
            assert proc.poll() is None, f"the scenario exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the scenario never started its processes"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = wait_for_session_to_end(proc.pid, 5)
        assert not left, f"still running 5 s after the stage died: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_pool_with_replacement_workers_terminates(tmp_path: Path) -> None:
    """img2dataset's pool (``maxtasksperchild``) starts workers from its handler thread, whose
    end at ``terminate()`` is a parent-death signal to them; a worker killed by it while idle
    in the task queue's lock hangs ``terminate()`` for ever."""
    out = tmp_path / "squares.txt"
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), "pool", str(out)], env=_env(), start_new_session=True
    )
    try:
        assert proc.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("the pool did not terminate within 60 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert out.read_text() == "0 1 4 9 16 25"


@pytest.mark.parametrize("ancestor_alive", [True, False])
def test_an_engine_worker_whose_stage_is_gone_dies_before_its_shard(ancestor_alive: bool) -> None:
    """A Spark or Ray worker's parent is the engine's (the pyspark daemon, the raylet), which
    dies a moment after the stage's img2dataset process; a worker starting a shard in that
    moment, or a fresh one already orphaned, must not write it."""
    ancestor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if not ancestor_alive:
        ancestor.kill()
        ancestor.wait()
    code = (
        "from tasks.download.process_tree import killed_with_parent\n"
        f"with killed_with_parent({ancestor.pid}):\n    print('wrote the shard')\n"
    )
    try:
        worker = subprocess.run(
            [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
        )
    finally:
        ancestor.kill()
        ancestor.wait()
    if ancestor_alive:
        assert (worker.returncode, worker.stdout) == (0, "wrote the shard\n")
    else:
        assert (worker.returncode, worker.stdout) == (-signal.SIGKILL, "")
