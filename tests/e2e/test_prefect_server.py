"""Against a real `prefect server start` on 127.0.0.1: every deployment in prefect.yaml
deploys, a process worker picks up a pipeline run and completes it, and headless Chromium
finds the data-quality artifact on the curate flow run's page in the UI, its plots drawn
inline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts"


def _api(server, method: str, path: str, body: dict | None = None):
    response = httpx.request(method, f"{server.api_url}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _completed_flow_runs(server, flow_name: str) -> list[dict]:
    # The nightly schedule also creates (future, SCHEDULED) runs of the pipeline flow.
    body = {
        "flows": {"name": {"any_": [flow_name]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    return _api(server, "POST", "/flow_runs/filter", body)


@pytest.fixture(scope="module")
def deployed(prefect_server):
    created = prefect_server.cli("work-pool", "create", "clipflow-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deploy = prefect_server.cli("--no-prompt", "deploy", "--all", timeout=600)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    return prefect_server


def test_every_prefect_yaml_deployment_is_registered(deployed):
    names = {d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    registered = {d["name"] for d in _api(deployed, "POST", "/deployments/filter", {})}
    assert names <= registered
    nightly = next(
        d
        for d in _api(deployed, "POST", "/deployments/filter", {})
        if d["name"] == "nightly-ingest"
    )
    assert nightly["schedules"] and nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"


def test_deploying_creates_no_active_schedule(deployed):
    """Schedules ship off: nothing runs until someone turns a schedule on in the UI."""
    deployments = _api(deployed, "POST", "/deployments/filter", {})
    schedules = [(d["name"], s) for d in deployments for s in d["schedules"]]
    assert schedules, "prefect.yaml defines schedules; none were registered"
    assert [name for name, s in schedules if s["active"]] == []
    scheduled = _api(
        deployed, "POST", "/flow_runs/filter",
        {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}},
    )  # fmt: skip
    assert scheduled == []


def test_worker_runs_a_deployment_and_the_ui_shows_the_quality_report(deployed, demo_web, tmp_path):
    config = {
        "storage": {"root": str(tmp_path / "root")},
        "crawl": {"seeds": [demo_web.url + "/"], "allow_private_networks": True, "max_pages": 200},
        "download": {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 28},
        "curate": {"decontaminate": False, "gate": "warn"},
    }
    params = json.dumps({"config": config, "stages": ["crawl", "download", "curate"]})
    with open(tmp_path / "worker.log", "wb") as worker_log:
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "worker", "start",
             "--pool", "clipflow-process", "--limit", "1"],
            cwd=REPO, env=deployed.env, stdout=worker_log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_default_sigint,
        )  # fmt: skip
        try:
            run = deployed.cli(
                "deployment", "run", "clipflow-pipeline/pipeline", "--params", params, "--watch",
                "--watch-timeout", "600", timeout=700,
            )  # fmt: skip
            log_tail = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + log_tail
        finally:
            _stop_worker(worker)

    (pipeline_run,) = _completed_flow_runs(deployed, "clipflow-pipeline")
    assert pipeline_run["deployment_id"] is not None  # run by the worker, from the deployment
    (curate_run,) = _completed_flow_runs(deployed, "curate")
    artifacts = _api(
        deployed, "POST", "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [curate_run["id"]]}}},
    )  # fmt: skip
    keys = {a["key"] for a in artifacts}
    assert {"curate-summary", "curate-data-docs"} <= keys, keys
    (docs,) = [a for a in artifacts if a["key"] == "curate-data-docs"]
    assert "http://127.0.0.1:8770/files/curate/report/data_docs/" in docs["data"]  # not file://
    (summary,) = [a for a in artifacts if a["key"] == "curate-summary"]
    _screenshot_artifact_in_ui(deployed.url, curate_run["id"], summary["id"])


def _default_sigint() -> None:
    """In the worker's child process before exec: SIGINT back to its default action.

    Prefect's worker stops gracefully by sending itself SIGINT (on SIGTERM too), and restores
    whatever SIGINT handler it found at start. A process started in the background by a
    non-interactive shell (`cmd &`: CI scripts, nohup) inherits SIGINT *ignored*, and so did
    this test's worker when pytest was started so: it ignored both signals and polled on for
    good (Prefect 3.9.1; every try, with or without a flow run or load), while with SIGINT at
    its default it stopped in 0.5 s. A worker started from such a script needs the same:
    `env --default-signal=INT prefect worker start ... &` (README, "The Prefect UI")."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_worker(worker: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM, as a supervisor stops a worker; fails if it is not gone within `grace_s`."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        pytest.fail(
            f"prefect worker (pid {worker.pid}) still running {grace_s:.0f} s after SIGTERM"
        )


def _screenshot_artifact_in_ui(ui_url: str, flow_run_id: str, summary_id: str) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.screenshot(path=str(SCREENSHOTS / "prefect-ui-curate-flow-run.png"), full_page=True)
        page.get_by_text("Artifacts", exact=True).first.click(timeout=60_000)
        started = time.monotonic()
        page.get_by_text("curate-summary").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "prefect-ui-curate-artifacts.png"), full_page=True)
        assert time.monotonic() - started < 60
        # The summary's plots are inline images, drawn by the UI itself (no storage access).
        page.goto(f"{ui_url}/artifacts/artifact/{summary_id}", wait_until="networkidle")
        page.locator('img[src^="data:image/png"]').first.wait_for(timeout=60_000)
        widths = page.evaluate(
            """() => Array.from(document.images)
                .filter(img => img.src.startsWith("data:image/png"))
                .map(img => img.complete ? img.naturalWidth : 0)"""
        )
        assert len(widths) >= 3 and min(widths) > 0, widths  # funnel, histograms, duplicates
        page.screenshot(path=str(SCREENSHOTS / "prefect-ui-curate-summary.png"), full_page=True)
        browser.close()
