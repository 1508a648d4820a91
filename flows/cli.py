"""The ``clipflow`` command: run the pipeline or one stage, and show stage status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime

from tasks.core.config import STAGES, ConfigError, load_config
from tasks.core.manifest import is_up_to_date, read_manifest
from tasks.core.storage import Storage


def _parse_stages(text: str | None) -> list[str] | None:
    if text is None:
        return None
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    return stages


def cmd_status(config_path: str) -> int:
    cfg = load_config(config_path)
    storage = Storage(cfg.storage)
    print(f"pipeline {cfg.name!r}, storage {storage.root}")
    for stage in STAGES:
        manifest = read_manifest(storage, stage)
        if manifest is None:
            print(f"  {stage:<9} not run")
            continue
        state = "done" if is_up_to_date(storage, cfg, stage) else "stale"
        when = manifest.get("finished_at", "?")
        secs = manifest.get("timings", {}).get("seconds", 0.0)
        counts = json.dumps(manifest.get("counts", {}), sort_keys=True)
        print(f"  {stage:<9} {state:<5} {when} ({secs:.1f}s) {counts}")
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
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage's flow alone")
        p.add_argument("config")
        p.add_argument("--force", action="store_true", help="rerun even if up to date")
        if stage == "evaluate":
            p.add_argument("--checkpoint", help="any OpenCLIP-format checkpoint (default: train's)")
            p.add_argument("--model", help="its architecture name or config JSON path")
    demo = sub.add_parser("demo", help="serve the demo web and run the whole pipeline on it")
    demo.add_argument("config")
    demo.add_argument("--with-moto", action="store_true", help="start a local S3 API server")
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
    for noisy in ("httpx", "great_expectations", "docket"):  # a line per API call or import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"clipflow: {e}", file=sys.stderr)
        return 2
    if args.command == "status":
        return cmd_status(args.config)
    if args.command == "verify":
        return cmd_verify(args.config)
    started = datetime.now(UTC)
    if args.command == "run":
        from flows.pipeline import pipeline_flow

        pipeline_flow(
            config=cfg.model_dump(mode="json"),
            stages=_parse_stages(args.stages),
            force=args.force,
        )
    elif args.command == "demo":
        from flows.demo import run_demo

        return run_demo(args.config, with_moto=args.with_moto)
    else:
        from flows.common import load_flow

        overrides = {
            k: v for k in ("checkpoint", "model") if (v := getattr(args, k, None)) is not None
        }
        load_flow(args.command)(config=cfg.model_dump(mode="json"), force=args.force, **overrides)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    print(f"clipflow {args.command}: finished in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
