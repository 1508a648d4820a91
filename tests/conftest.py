"""Shared test fixtures. Area-specific fixtures live in tests/fixtures_*.py plugins."""

from __future__ import annotations

import os

import pytest

# Tests talk only to services on 127.0.0.1; make sure no proxy setting reroutes them.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Prefect's servers send a telemetry heartbeat by default: off for every harness and server
# the tests start (they inherit this environment). tests/foundation/test_loopback_only.py
# checks that no process of a test run connects anywhere but 127.0.0.1 / ::1.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# The tests' webs are on loopback: let configs that say allow_private_networks reach them
# (tests/foundation/test_config.py checks that a config alone cannot).
os.environ["CLIPFLOW_ALLOW_PRIVATE_NETWORKS"] = "1"

pytest_plugins = [
    "tests.fixtures_prefect",
    "tests.fixtures_web",
    "tests.fixtures_s3",
    "tests.fixtures_pipeline",
    "tests.xdist_groups",
]


@pytest.fixture
def tmp_root(tmp_path):
    """A fresh local storage root."""
    root = tmp_path / "root"
    root.mkdir()
    return root
