"""Which pytest-xdist worker runs which tests, for `make test TEST_WORKERS=2` (``-n 2 --dist
loadgroup``).

A serial run kept the 2-core CI machine's cores ~55% busy (subprocesses starting, servers
answering, timeouts running out), so the suite can run on two workers. A worker runs whole
groups: a test file, so that its module-scoped fixtures are made once; or, for the files in
``GROUPS``, a named group of files, because they share a costly session fixture (made once
per worker that needs it) or a resource that another test must not touch meanwhile.

xdist's own ``loadgroup`` reads ``xdist_group`` marks through the test's node id, which
pytest 9.2 no longer lets a plugin change (pytest-xdist issue #1386): its groups are
silently ignored. So the groups are decided here, from file paths, by a scheduler of our
own; and every worker checks, after collection, that each test using one of the fixtures
below is in that fixture's group, so that a new test cannot silently make it twice.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

GROUPS: dict[str, tuple[str, ...]] = {
    # The session's one small pipeline run (~100 s on 2 cores).
    "small_pipeline": ("tests/e2e/test_pipeline.py", "tests/inspect/"),
    # The demo web downloaded once for curate's tests (~20 s).
    "downloaded_web": (
        "tests/curate/test_bad_input.py",
        "tests/curate/test_clip_score.py",
        "tests/curate/test_content_address.py",
        "tests/curate/test_curate_stage.py",
        "tests/curate/test_execution.py",
        "tests/curate/test_faiss_device.py",
        "tests/curate/test_flow.py",
        "tests/curate/test_knn_shards.py",
        "tests/curate/test_s3.py",
    ),
    # A tiny model trained once for evaluate's tests (~10 s).
    "trained_checkpoint": (
        "tests/evaluate/test_adapt.py",
        "tests/evaluate/test_flow.py",
        "tests/evaluate/test_parity.py",
    ),
    # Not a fixture: test_host_collectives.py checks that no shared-memory arena is left in
    # /dev/shm, which a training run with train.host_collectives on the other worker would
    # briefly hold.
    "host_collectives": (
        "tests/model/test_host_collectives.py",
        "tests/train/test_host_collectives_train.py",
    ),
}
SHARED_FIXTURES = ("small_pipeline", "downloaded_web", "trained_checkpoint")

LONGEST_FIRST = (
    # Started first, so that no worker is left with one of them at the end while the other
    # idles (seconds in a serial run on the 2-core CI machine, 2026-12-02).
    "tests/e2e/test_kill_resume.py",  # 427
    "small_pipeline",  # 300
    "downloaded_web",  # 200
    "tests/e2e/test_prefect_server.py",  # 135
    "tests/train/test_train_stage.py",  # 113
    "tests/e2e/test_demo_cli.py",  # 102
    "tests/foundation/test_loopback_only.py",  # 95
    "tests/download/test_download.py",  # 95
    "tests/download/test_distributors.py",  # 75
    "tests/evaluate/test_linear_probe.py",  # 68
    "tests/curate/test_dedup_demo_web.py",  # 56
    "tests/foundation/test_fingerprints.py",  # 53
)


def group_of(nodeid: str) -> str:
    """The group a test runs in: its named group in ``GROUPS``, or else its file."""
    path = nodeid.split("::", 1)[0]
    for name, paths in GROUPS.items():
        if path.startswith(paths):
            return name
    return path


class GroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling (a whole group to one worker) with ``group_of`` as the scope;
    a worker asking for work gets the first group left in ``LONGEST_FIRST``, or else the
    group with the most tests."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)

    def _assign_work_unit(self, node: Any) -> None:
        # xdist hands out the queue's first group: put the one we want there.
        sizes = {scope: len(tests) for scope, tests in self.workqueue.items()}
        self.workqueue.move_to_end(
            min(sizes, key=lambda s: queue_position(s, sizes[s])), last=False
        )
        super()._assign_work_unit(node)


def queue_position(group: str, tests: int) -> tuple[int, int, str]:
    """Sort key of a group of ``tests`` tests: its place in ``LONGEST_FIRST``, or else after
    them, more tests first."""
    place = LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)
    return (place, -tests, group)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which answers for every --dist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    return GroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a stale list: each file in ``GROUPS`` and ``LONGEST_FIRST`` is there."""
    paths = [p for group in GROUPS.values() for p in group]
    paths += [name for name in LONGEST_FIRST if name not in GROUPS]
    gone = [p for p in paths if not (config.rootpath / p).exists()]
    if gone:
        raise pytest.UsageError(f"tests/xdist_groups.py names files that are not there: {gone}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that uses a shared fixture outside its group (in serial runs too)."""
    strays = [
        f"{item.nodeid} uses {name}"
        for item in items
        for name in SHARED_FIXTURES
        if name in getattr(item, "fixturenames", ()) and group_of(item.nodeid) != name
    ]
    if strays:
        raise pytest.UsageError(
            "tests outside their session fixture's xdist group (add their files to GROUPS "
            "in tests/xdist_groups.py): " + "; ".join(strays)
        )
