"""flows/temporary_server.py: Prefect's temporary server booted in the background, and flow
runs without heartbeats on it; a configured server left as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prefect import flow
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from flows.temporary_server import TemporaryServer, uses_temporary_server, without_heartbeats

REPO = Path(__file__).resolve().parents[2]

# Run in a process of its own, without PREFECT_API_URL (the session's harness sets one) and
# with a PREFECT_HOME of its own: the flows below run on a real temporary server.
_PROBE = textwrap.dedent(
    """
    import json, threading
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings
    from flows.temporary_server import start_in_background, uses_temporary_server, without_heartbeats

    assert uses_temporary_server()
    server = start_in_background()
    server.wait()
    booted = SubprocessASGIServer()
    pid = booted.server_process.pid

    def heartbeat_threads() -> int:
        # Prefect 3.9 runs heartbeat_loop as the argument of a copied context's run().
        return sum(getattr(a[0], "__name__", "") == "heartbeat_loop"
                   for a in (getattr(t, "_args", ()) for t in threading.enumerate()) if a)

    @flow
    def probe() -> dict:
        with get_client(sync_client=True) as client:
            api = str(client.api_url)
        return {
            "heartbeat_frequency": get_current_settings().flows.heartbeat_frequency,
            "heartbeat_threads": heartbeat_threads(),
            "api": api,
        }

    with without_heartbeats():
        inside = probe()
    outside = probe()
    print(json.dumps({
        "error": repr(server.error), "booted_api": booted.api_url, "inside": inside,
        "outside": outside, "same_process": SubprocessASGIServer().server_process.pid == pid,
    }))
    """
)


def test_the_temporary_server_boots_in_the_background_and_its_runs_send_no_heartbeats(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["error"] == "None"
    # The flows ran on the server booted in the background, not on one they started.
    assert found["same_process"]
    assert found["inside"]["api"].rstrip("/") == found["booted_api"].rstrip("/")
    assert found["outside"]["api"] == found["inside"]["api"]
    # Inside without_heartbeats no heartbeat thread runs; outside, Prefect's default does.
    assert found["inside"]["heartbeat_frequency"] is None
    assert found["inside"]["heartbeat_threads"] == 0
    assert found["outside"]["heartbeat_frequency"] == 180
    assert found["outside"]["heartbeat_threads"] == 1


def test_a_configured_server_keeps_its_heartbeats_and_is_not_booted():
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert not uses_temporary_server()
        server = TemporaryServer()
        assert server._thread is None
        server.wait()  # nothing to wait for
        with without_heartbeats():
            assert get_current_settings().flows.heartbeat_frequency == 180


def test_runs_on_the_test_harness_keep_heartbeats(prefect_harness):
    """The harness is a server of the test session's: configured, so left alone."""

    @flow
    def frequency() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    assert not uses_temporary_server()
    with without_heartbeats():
        assert frequency() == 180
