"""The ``clipflow`` command: run the pipeline or one stage, and show stage status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.config import ALLOW_PRIVATE_ENV, ConfigError, PipelineConfig, load_config
from tasks.core.lineage import StaleUpstream, pipeline_status, read_manifest
from tasks.core.storage import Storage
from tasks.stages import PIPELINE, STAGES, stage

if TYPE_CHECKING:
    from flows.temporary_server import TemporaryServer


def _parse_stages(text: str | None) -> list[str] | None:
    if text is None:
        return None
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    return stages


def cmd_status(config_path: str) -> int:
    """Each stage: done / stale (and why) / not run, with its counts."""
    cfg = load_config(config_path)
    storage = Storage(cfg.storage)
    print(f"pipeline {cfg.name!r}, storage {storage.root}")
    for name, status in pipeline_status(storage, cfg).items():
        manifest = read_manifest(storage, name)
        if manifest is None:
            print(f"  {name:<9} not run")
            continue
        when = manifest.get("finished_at", "?")
        secs = manifest.get("timings", {}).get("seconds", 0.0)
        counts = json.dumps(manifest.get("counts", {}), sort_keys=True)
        why = f" {status.reason}" if status.reason else ""
        print(f"  {name:<9} {status.state:<5}{why} {when} ({secs:.1f}s) {counts}")
    return 0


def cmd_verify(config_path: str) -> int:
    """Read every shard back against shards/manifest.json; non-zero and the bad shards named."""
    from tasks.shard.verify import verify_shards

    report = verify_shards(Storage(load_config(config_path).storage))
    for problem in report.problems:
        print(f"clipflow verify: {problem}", file=sys.stderr)
    if not report.ok:
        return 1
    print(f"clipflow verify: {report.shards} shards, {report.samples} samples: all match")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline flow (or some of its stages)")
    run.add_argument("config")
    run.add_argument("--stages", help="comma-separated subset, e.g. crawl,download")
    run.add_argument("--force", help="rerun this stage and everything downstream of it")
    status = sub.add_parser("status", help="print each stage's manifest")
    status.add_argument("config")
    verify = sub.add_parser("verify", help="check every shard against shards/manifest.json")
    verify.add_argument("config")
    run.add_argument(
        "--with-upstream",
        action="store_true",
        help="first rerun the stages these read from that are stale (else a stale one refuses)",
    )
    for record in PIPELINE:
        p = sub.add_parser(record.name, help=f"run the {record.name} stage alone: {record.summary}")
        p.add_argument("config")
        p.add_argument("--force", action="store_true", help="rerun even if up to date")
        for option in record.options:
            p.add_argument(option.flag, dest=option.field, help=f"{option.help} ({option.field})")
    inspect = sub.add_parser(
        "inspect", help="browse the stage outputs in a local web app (127.0.0.1 by default)"
    )
    inspect.add_argument("config")
    inspect.add_argument("--port", type=int, help="default: inspect.port (8770)")
    inspect.add_argument("--host", help="default: inspect.host (127.0.0.1)")
    demo = sub.add_parser("demo", help="serve the demo web and run the whole pipeline on it")
    demo.add_argument("config")
    demo.add_argument("--with-moto", action="store_true", help="start a local S3 API server")
    demo.add_argument(
        "--web-size", default="demo", choices=("demo", "test"),
        help="the demo web's size: demo (~11,600 images) or test (~300, for a quick try)",
    )  # fmt: skip
    demo.add_argument("--web-dir", type=Path, help="where the demo web is built (default .cache)")
    sub.add_parser(
        "demo-web", help="build or serve the demo web: demo-web build|serve DIR", add_help=False
    )
    return parser


def _prefect_defaults() -> None:
    """Without a server (PREFECT_API_URL unset) Prefect starts a temporary one, which takes
    more than its default 20 s on a busy 2-core machine; and our stdlib loggers should reach
    the flow-run logs in the UI."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Offline: the server would otherwise send telemetry to Prefect's servers.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,model")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo-web"]:
        from demo.web import main as demo_web_main

        return demo_web_main(argv[1:])
    _prefect_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in (
        "httpx",
        "great_expectations",
        "docket",
        "faiss.loader",
    ):  # a line per call or import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command in ("demo", "inspect"):
        # The demo web is served on loopback: the demo opens private networks for the configs
        # that ask, before they are validated. Inspect only reads the outputs, never fetches,
        # so it can load the same configs.
        os.environ[ALLOW_PRIVATE_ENV] = "1"
    try:
        cfg = load_config(args.config)  # validated once, here; flows receive it typed
    except ConfigError as e:
        print(f"clipflow: {e}", file=sys.stderr)
        return 2
    if args.command == "status":
        return cmd_status(args.config)
    if args.command == "verify":
        return cmd_verify(args.config)
    if args.command == "inspect":
        from tasks.inspect.app import serve

        serve(cfg, args.host, args.port)
        return 0
    stages = _parse_stages(getattr(args, "stages", None))  # refused before anything starts
    # Every command from here runs flows: Prefect's temporary server (when no server is
    # configured) boots on the other core while they import (flows/temporary_server.py).
    from flows.temporary_server import start_in_background, without_heartbeats

    server = start_in_background()
    if args.command == "demo":
        from flows.demo import run_demo

        with without_heartbeats():
            return run_demo(
                args.config, with_moto=args.with_moto, web_size=args.web_size,
                web_dir=args.web_dir, server=server,
            )  # fmt: skip
    started = datetime.now(UTC)
    try:
        with without_heartbeats():
            _run(args, cfg, stages, server)
    except StaleUpstream as refused:
        print(f"clipflow: {refused}".replace("CONFIG", args.config), file=sys.stderr)
        return 3
    elapsed = (datetime.now(UTC) - started).total_seconds()
    print(f"clipflow {args.command}: finished in {elapsed:.1f}s")
    return 0


def _run(
    args: argparse.Namespace,
    cfg: PipelineConfig,
    stages: list[str] | None,
    server: TemporaryServer,
) -> None:
    """Import the flow the command runs, wait for the temporary server (if any), run it."""
    if args.command == "run":
        from flows.pipeline import pipeline_flow

        server.wait()
        pipeline_flow(config=cfg, stages=stages, force=args.force, with_upstream=args.with_upstream)
        return
    from flows.common import load_flow

    flow = load_flow(args.command)
    server.wait()
    flow(config=with_options(cfg, args), force=args.force)


def with_options(cfg: PipelineConfig, args: argparse.Namespace) -> PipelineConfig:
    """The config with a stage's CLI options applied (``--checkpoint`` sets
    ``evaluate.checkpoint``): they take part in its config hash like any other field."""
    data = cfg.model_dump()
    for option in stage(args.command).options:
        value = getattr(args, option.field, None)
        if value is not None:
            section, _, field = option.field.partition(".")
            data[section][field] = value
    return PipelineConfig.model_validate(data)


if __name__ == "__main__":
    raise SystemExit(main())
