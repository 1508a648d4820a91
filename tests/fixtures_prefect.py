"""Prefect for tests: one `prefect_test_harness` per session (it takes ~20 s to start here, so
tests share it), and a real `prefect server start` for the deployment / UI tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_records(flow_run_id: UUID) -> tuple[list[Any], list[Any]]:
    """The artifacts and task runs of one flow run: the session's harness serves every test,
    so a lookup by artifact key alone could find another test's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return (
            client.read_artifacts(flow_run_filter=runs),
            client.read_task_runs(flow_run_filter=runs),
        )


def run_artifacts(flow_run_id: UUID) -> dict[str, Any]:
    """One flow run's artifacts by key."""
    return {a.key: a for a in run_records(flow_run_id)[0]}


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass
class PrefectServer:
    """A real `prefect server start` on 127.0.0.1, and the environment to talk to it."""

    url: str
    env: dict[str, str]

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the `prefect` CLI against this server from the repository root."""
        exe = str(Path(sys.executable).with_name("prefect"))
        return subprocess.run(
            [exe, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """`prefect server start` (SQLite, its own PREFECT_HOME) for the test session."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
        "CLIPFLOW_HOME": str(REPO),
    }
    exe = str(Path(sys.executable).with_name("prefect"))
    log = open(home / "server.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    proc = subprocess.Popen(
        [exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_healthy(f"{url}/api/health", proc, home / "server.log")
        yield PrefectServer(url=url, env=env)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after 180 s: {log_path.read_text()[-2000:]}")
