"""`clipflow demo --with-moto` as a user runs it (the installed command, in its own process),
on the small ("test") demo web: it serves the web itself, starts and stops an S3 API server,
runs all six stages on S3, and prints the summary. The local pipeline runs in
test_pipeline.py; the CLI's dispatch to the demo in tests/foundation/test_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from demo import benchmark_sets
from tasks.core.config import ALLOW_PRIVATE_ENV
from tasks.stages import PIPELINE, STAGES
from tests.evaluate.conftest import small_fashion_set
from tests.fixtures_s3 import free_port

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 Fashion-MNIST test images: evaluation is not what these tests are about."""
    out = tmp_path_factory.mktemp("bench") / "fashion_small"
    benchmark_sets.write_set(out, small_fashion_set(), samples_per_shard=100)
    return out


def _config(path: Path, storage: dict, eval_set: Path) -> Path:
    config = {
        "name": "demo-cli-test",
        "storage": storage,
        "crawl": {"seeds": [f"http://127.0.0.1:{free_port()}/"], "allow_private_networks": True,
                  "max_pages": 300},
        "download": {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 28},
        "shard": {"samples_per_shard": 64},
        "train": {"model": "clipflow-tiny", "batch_size": 32, "samples": 256, "warmup": 2,
                  "precision": "fp32", "nproc_per_node": 1, "workers": 0},
        # A name that is not a built-in set: the demo uses the set as it is, unbuilt.
        "evaluate": {"datasets": [{"name": "fashion", "path": str(eval_set)}]},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, web_dir: Path, *extra: str) -> str:
    """The installed ``clipflow`` command, reporting to the session's Prefect harness."""
    from prefect.settings import PREFECT_API_URL

    exe = Path(sys.executable).with_name("clipflow")
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env.pop(ALLOW_PRIVATE_ENV, None)  # the demo opens loopback itself
    done = subprocess.run(
        [str(exe), "demo", str(config), "--web-size", "test", "--web-dir", str(web_dir), *extra],
        env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _summary_counts(out: str) -> dict[str, dict[str, int]]:
    """Each stage's non-zero counts, from the summary's ``stage seconds share k=v, ...`` lines."""
    counts = {}
    for line in out.splitlines():
        name, *rest = line.split(maxsplit=3) or [""]
        if name in STAGES and len(rest) == 3:
            pairs = (item.split("=") for item in rest[2].split(", "))
            counts[name] = {key: int(value) for key, value in pairs}
    return counts


def test_clipflow_demo_with_moto_runs_every_stage_on_s3(
    prefect_harness, demo_web, eval_set, tmp_path
) -> None:
    """The command builds nothing here (the session's test web is already built where it is
    pointed), starts moto_server, serves the web, runs the six stages on S3, and prints the
    summary before moto (which keeps objects in memory) stops."""
    storage = {"root": "s3://clipflow-demo-cli/demo",
               "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    config = _config(tmp_path / "demo-s3.yaml", storage, eval_set)
    out = _run(config, demo_web.site_dir, "--with-moto")
    counts = _summary_counts(out)
    assert list(counts) == list(STAGES), out
    for record in PIPELINE:  # each stage's accounting, as its manifest on S3 recorded it
        for identity in record.accounting:
            assert identity.total in counts[record.name], (record.name, identity.total)
            zeros = {part: 0 for part in identity.parts if not part.endswith("*")}
            identity.check(record.name, {**zeros, **counts[record.name]})
    assert counts["shard"]["samples"] == counts["curate"]["kept"] > 0
    assert counts["train"]["steps"] == 256 // 32
    assert any(line.startswith("fashion ") and "acc1 = " in line for line in out.splitlines())
    assert "near-duplicates vs the planted copies: recall" in out
    assert "outputs under s3://clipflow-demo-cli/demo" in out
