"""Fixtures for the train tests: shards from real images, and runs of torchrun."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
import yaml

from demo.train_shards import write_fashion_shards
from tasks.core.config import load_config
from tasks.core.runner import run_stage
from tasks.shard.stage import shard
from tests.finished_stages import record_finished

REPO = Path(__file__).resolve().parents[2]
# The tiny model, 2 ranks x batch 32 for 24 steps: seconds of training on two cores.
TINY_TRAIN = {
    "model": "clipflow-tiny",
    "batch_size": 32,
    "samples": 24 * 64,
    "lr": 2.0e-3,
    "warmup": 4,
    "precision": "fp32",
    "nproc_per_node": 2,
    "workers": 1,
    "log_every_steps": 2,
    "checkpoint_every_steps": 8,
    "shuffle_buffer": 200,
    "keep_checkpoints": 5,
}
CORRUPT = (7, 311)


def tiny_env() -> dict[str, str]:
    """One thread per rank: two ranks share two cores with other tests."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def fashion_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 Fashion-MNIST samples in 4 shards, two of them corrupt."""
    folder = tmp_path_factory.mktemp("fashion") / "shards"
    write_fashion_shards(folder, 600, 150, corrupt=CORRUPT)
    return folder


def _curate_outputs(root: Path, samples: int, per_download_shard: int) -> None:
    """download/*.tar (img2dataset's layout) and curate/samples.parquet + its manifest, as the
    curate stage leaves them, from Fashion-MNIST; one kept image is corrupt."""
    download = root / "download"
    rows = []
    tmp = root / "tmp-shards"
    write_fashion_shards(tmp, samples, per_download_shard, corrupt=CORRUPT)
    download.mkdir(parents=True)
    for tar in sorted(tmp.glob("*.tar")):
        tar.rename(download / tar.name)
        for sample in wds.WebDataset(str(download / tar.name), shardshuffle=False):
            i = int(sample["__key__"])
            rows.append(
                {"key": sample["__key__"], "url": f"http://127.0.0.1/{i}.jpg",
                 "caption": sample["txt"].decode(),
                 "page_url": "http://127.0.0.1/", "source": "site",
                 "download_shard": tar.name, "keep": i % 10 != 9,
                 "image_sha256": hashlib.sha256(sample["jpg"]).hexdigest()}
            )  # fmt: skip
    frame = pd.DataFrame(rows)
    (root / "curate").mkdir()
    frame.to_parquet(root / "curate" / "samples.parquet", index=False)
    kept = int(frame.keep.sum())
    counts = {"input": len(frame), "kept": kept, "dropped_every_tenth": len(frame) - kept}
    record_finished(load_config(pipeline_config(root)), curate=counts)


def pipeline_config(root: Path, **train: object) -> dict:
    return {
        "name": "train-test",
        "storage": {"root": str(root)},
        "shard": {"samples_per_shard": 180},
        "train": {**TINY_TRAIN, **train},
    }


@pytest.fixture(scope="session")
def sharded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root whose shards/ the real shard stage wrote (from curate outputs)."""
    root = tmp_path_factory.mktemp("pipeline") / "root"
    _curate_outputs(root, 800, 400)
    cfg = load_config(pipeline_config(root))
    run_stage("shard", cfg, lambda storage: shard(cfg, storage))
    return root


def write_run_config(folder: Path, shards: Path, **train: object) -> Path:
    """A resolved model.train config (as the train stage writes it) for a torchrun test."""
    data = {**TINY_TRAIN, **train, "shards": str(shards), "output": str(folder / "train")}
    data.pop("nproc_per_node")
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def torchrun(config: Path, *extra: str, nproc: int = 2, **popen: object) -> subprocess.Popen:
    """Start a standalone torchrun of model.train in its own process group."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), *extra, "-m", "model.train",
               "--config", str(config)]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, env=tiny_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a torchrun; its output; fails the test (after killing it) on a timeout."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s:\n{out.decode()[-3000:]}")
    return out.decode()


def read_metrics(train_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{path} did not appear (exit {proc.poll()})")
        time.sleep(0.02)
