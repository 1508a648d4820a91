"""`clipflow demo`: the embedded default, end to end on one machine with nothing to install.

Builds (once) the demo web and the built-in benchmark sets from real offline images, serves
the web on the host and port of ``crawl.seeds[0]``, optionally starts a local S3 API server,
runs the pipeline flow, and prints what came out of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from demo.build_lock import one_builder
from flows.pipeline import pipeline_flow, pipeline_summary
from flows.temporary_server import TemporaryServer
from tasks.core.config import ALLOW_PRIVATE_ENV, PipelineConfig, load_config
from tasks.core.storage import Storage

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
DEMO_WEB_DIR = REPO / ".cache" / "demo-web"


def ensure_demo_web(out_dir: Path = DEMO_WEB_DIR, size: str = "demo") -> Path:
    """Build the demo web (preset ``size`` of demo.web.PRESETS) once; a finished build leaves
    ``planted.json`` last, recording its sizes and build version. Another build is replaced."""
    from demo.web import BUILD_VERSION, PRESETS, build_demo_web

    planted = out_dir / "planted.json"
    with one_builder(out_dir):  # a second `clipflow demo` waits, then finds the web built
        if planted.exists():
            built = json.loads(planted.read_text())
            if (built.get("sizes"), built.get("version")) == (asdict(PRESETS[size]), BUILD_VERSION):
                return out_dir
            log.info("the demo web in %s has other sizes or an older build: rebuilding it", out_dir)
            shutil.rmtree(out_dir)
        log.info("building the %r demo web into %s", size, out_dir)
        build_demo_web(out_dir, size)
    return out_dir


def ensure_benchmark_sets(cfg: PipelineConfig) -> None:
    """Build (or find up to date) each configured evaluation set that is a built-in one."""
    from demo.benchmark_sets import BUILDERS

    for dataset in cfg.evaluate.datasets:
        if dataset.name in BUILDERS and "://" not in dataset.path:
            BUILDERS[dataset.name](Path(dataset.path))


def _start_moto(endpoint: str, bucket: str) -> subprocess.Popen[bytes]:
    import boto3

    parts = urlsplit(endpoint)
    if parts.hostname not in {"127.0.0.1", "localhost"}:
        raise ValueError(f"--with-moto serves on loopback only, not {endpoint}")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "clipflow-demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "clipflow-demo-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(parts.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = boto3.client("s3", endpoint_url=endpoint)
    for _ in range(100):
        try:
            client.create_bucket(Bucket=bucket)
            return proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto_server did not come up at {endpoint}")


def planted_copies_line(cfg: PipelineConfig, site: Path) -> str:
    """One line: near-duplicate precision and recall on the demo web's planted copies."""
    import pandas as pd

    from demo.dedup_quality import planted_copy_scores

    storage = Storage(cfg.storage)
    with storage.open(storage.uri("curate", "samples.parquet"), "rb") as fh:
        samples = pd.read_parquet(fh)
    s = planted_copy_scores(samples, json.loads((site / "planted.json").read_text()))
    return (
        f"near-duplicates vs the planted copies: recall {s['recall']:.2f} "
        f"({s['found']}/{s['planted_near_copies']} planted near copies found), precision "
        f"{s['precision']:.2f} ({s['right']}/{s['near_duplicate_rows']} near_duplicate rows "
        "are a planted copy)"
    )


def inspect_line(config_path: str, cfg: PipelineConfig) -> str:
    """The command that browses this run's outputs (the samples each rule dropped, duplicate
    clusters, search with the trained model)."""
    return (
        f"browse the outputs: .venv/bin/clipflow inspect {config_path}   "
        f"(then open {cfg.inspect.base_url}/)"
    )


def run_demo(
    config_path: str,
    with_moto: bool = False,
    web_size: str = "demo",
    web_dir: Path | None = None,
    server: TemporaryServer | None = None,
) -> int:
    """Serve the demo web (preset ``web_size``, built into ``web_dir``), run the pipeline on
    it, print the summary. ``server``: Prefect's temporary server booting in the background
    (``clipflow demo``), waited for inside the wall time the demo prints."""
    from demo.web import serve

    # The demo web is served on loopback: the demo (and only the demo) opens the SSRF guard
    # for the configs that ask, which production configs do not.
    os.environ[ALLOW_PRIVATE_ENV] = "1"
    cfg = load_config(config_path)
    seed = urlsplit(cfg.crawl.seeds[0])
    ensure_benchmark_sets(cfg)
    site = ensure_demo_web(web_dir or DEMO_WEB_DIR, web_size)
    moto = None
    if with_moto:
        if not cfg.storage.is_s3 or not cfg.storage.s3_endpoint_url:
            raise ValueError("--with-moto needs storage.root s3://… and storage.s3_endpoint_url")
        moto = _start_moto(cfg.storage.s3_endpoint_url, cfg.storage.root[5:].split("/")[0])
    started = time.monotonic()
    try:
        if server is not None:
            server.wait()
        with serve(site, host=seed.hostname or "127.0.0.1", port=seed.port or 80):
            pipeline_flow(config=cfg)
        # The summary reads the manifests from storage: before moto (in memory) stops.
        print(pipeline_summary(cfg))
        print(planted_copies_line(cfg, site))
        elapsed = time.monotonic() - started
        print(f"outputs under {Storage(cfg.storage).root}; wall time {elapsed:.1f}s")
        if moto is not None:
            print("moto_server keeps objects in memory: they are gone once the demo ends")
        else:
            print(inspect_line(config_path, cfg))
    finally:
        if moto is not None:
            moto.kill()
    return 0
