"""The `clipflow` command: status, config errors, and its wiring to every stage's flow."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser, main
from tasks.core.config import load_config
from tasks.core.manifest import StageResult
from tasks.core.runner import run_stage
from tasks.stages import STAGES
from tests.two_at_once import exit_codes_of_two_at_once


def write_config(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_status_reports_each_stage(tmp_path, capsys):
    path = write_config(tmp_path, {"storage": {"root": "root"}})
    counts = {"pairs_found": 7, "pairs_after_dedup": 7, "duplicates_dropped": 0}
    run_stage("crawl", load_config(path), lambda storage: StageResult(counts=counts))
    assert main(["status", path]) == 0
    out = capsys.readouterr().out
    assert "crawl     done" in out and '"pairs_after_dedup": 7' in out
    for stage in STAGES[1:]:
        assert f"{stage:<9} not run" in out


def test_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    path = write_config(tmp_path, {"download": {"thread_count": 0}})
    assert main(["download", path]) == 2
    assert "download.thread_count" in capsys.readouterr().err


def test_every_stage_has_a_subcommand_and_a_flow():
    from flows.common import load_flow

    parser = build_parser()
    for stage in STAGES:
        args = parser.parse_args([stage, "c.yaml", "--force"])
        assert args.command == stage and args.force
        assert load_flow(stage).name == stage


def test_run_rejects_unknown_stages(tmp_path):
    path = write_config(tmp_path, {"storage": {"root": "root"}})
    with pytest.raises(SystemExit, match="unknown stage"):
        main(["run", path, "--stages", "crawl,dowload"])


def test_demo_opens_loopback_for_its_own_config_only(monkeypatch):
    """`clipflow demo` serves the demo web on 127.0.0.1, so it sets the private-network
    switch itself before the config is validated; `clipflow run` on the same config does not."""
    import flows.demo
    import flows.temporary_server

    monkeypatch.delenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS")
    # No flow runs here, so no temporary Prefect server is booted for one.
    monkeypatch.setattr(flows.temporary_server, "uses_temporary_server", lambda: False)
    assert main(["run", "configs/demo.yaml", "--stages", "crawl"]) == 2  # refused up front
    calls: list[str] = []
    monkeypatch.setattr(flows.demo, "run_demo", lambda path, **_: calls.append(path) or 0)
    assert main(["demo", "configs/demo.yaml"]) == 0
    assert calls == ["configs/demo.yaml"]


def _ensure_web_in_a_child(out: str, log: str) -> None:
    """A child process's ensure_demo_web, with a builder that takes a second and logs its pid."""
    import demo.web
    from flows.demo import ensure_demo_web

    def slow_build(out_dir: Path, size: str) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        sizes = dataclasses.asdict(demo.web.PRESETS[size])
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "planted.json").write_text(
            json.dumps({"sizes": sizes, "version": demo.web.BUILD_VERSION})
        )

    demo.web.build_demo_web = slow_build  # type: ignore[assignment]
    ensure_demo_web(Path(out), "test")


def test_two_demos_at_once_build_the_demo_web_once(tmp_path):
    """Two `clipflow demo` runs in one checkout share .cache/demo-web: one builds it, the
    other waits and finds it built (without the lock both build into the same folder)."""
    log = tmp_path / "builds.log"
    codes = exit_codes_of_two_at_once(_ensure_web_in_a_child, str(tmp_path / "web"), str(log))
    assert codes == [0, 0]
    assert len(log.read_text().split()) == 1
