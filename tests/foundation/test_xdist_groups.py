"""tests/xdist_groups.py: which tests share a pytest-xdist worker, and the check that a test
using a shared session fixture is in that fixture's group."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.xdist_groups import group_of, pytest_collection_modifyitems, queue_position


def test_a_test_runs_with_its_file_or_its_named_group():
    assert (
        group_of("tests/crawl/test_crawl_flow.py::test_x[a::b]") == "tests/crawl/test_crawl_flow.py"
    )
    assert group_of("tests/inspect/test_inspect_ui.py::test_y") == "small_pipeline"
    assert group_of("tests/e2e/test_pipeline.py::test_z") == "small_pipeline"
    assert group_of("tests/curate/test_flow.py::test_w") == "downloaded_web"
    assert (
        group_of("tests/curate/test_dedup_quality.py::test_v")
        == "tests/curate/test_dedup_quality.py"
    )


def test_a_shared_fixture_outside_its_group_is_refused():
    fine = SimpleNamespace(nodeid="tests/inspect/test_x.py::t", fixturenames=["small_pipeline"])
    stray = SimpleNamespace(nodeid="tests/crawl/test_x.py::t", fixturenames=["small_pipeline"])
    pytest_collection_modifyitems([fine])  # type: ignore[list-item]
    with pytest.raises(pytest.UsageError, match=r"tests/crawl/test_x.py::t uses small_pipeline"):
        pytest_collection_modifyitems([fine, stray])  # type: ignore[list-item]


def test_the_longest_groups_are_queued_first_then_the_largest():
    sizes = {
        "tests/crawl/test_a.py": 1,
        "tests/curate/test_b.py": 2,
        "small_pipeline": 1,
        "tests/e2e/test_kill_resume.py": 13,
    }
    order = sorted(sizes, key=lambda group: queue_position(group, sizes[group]))
    assert order == [
        "tests/e2e/test_kill_resume.py",
        "small_pipeline",
        "tests/curate/test_b.py",
        "tests/crawl/test_a.py",
    ]
