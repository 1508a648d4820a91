"""The train stage end to end: the Prefect flow runs torchrun (2 ranks, gloo on CPU) on
shards the shard stage wrote; then a SIGKILLed run resumes to the same end, and the
checkpoint loads into OpenCLIP."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.fixtures_prefect import run_artifacts
from tests.fixtures_s3 import upload_tree
from tests.train.conftest import finish, pipeline_config, read_metrics, torchrun, wait_for

pytestmark = pytest.mark.timeout(600)
METRIC_KEYS = {"step", "loss", "lr", "logit_scale", "samples_per_s", "data_wait"}


@pytest.fixture(scope="module")
def flow_state(sharded_root: Path, prefect_harness: None) -> Any:
    """The train flow on the shard stage's output: 24 steps of 2 ranks x 32."""
    from flows.train import train_flow

    os.environ["OMP_NUM_THREADS"] = "1"
    return train_flow(config=pipeline_config(sharded_root), force=True, return_state=True)


@pytest.fixture(scope="module")
def flow_run(flow_state: Any) -> dict:
    return flow_state.result()


def test_flow_trains_checkpoints_and_publishes(
    flow_run: dict, flow_state: Any, sharded_root: Path
) -> None:
    train_dir = sharded_root / "train"
    assert flow_run["counts"]["steps"] == 24
    assert flow_run["counts"]["samples_seen"] == 24 * 64
    # Two corrupt images among the 720 kept samples, read in each of ~2 epochs.
    assert flow_run["counts"]["skipped_samples"] >= 2
    names = sorted(p.name for p in (train_dir / "checkpoints").iterdir())
    assert names == ["latest.pt", "step_16.pt", "step_24.pt", "step_8.pt"]
    records = read_metrics(train_dir)
    assert [r["step"] for r in records] == list(range(2, 25, 2))
    assert all(set(r) >= METRIC_KEYS and 0 <= r["data_wait"] <= 1 for r in records)
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < first - 0.3, f"loss did not decrease: {first:.3f} -> {last:.3f}"
    assert (train_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = yaml.safe_load((train_dir / "config.yaml").read_text())
    assert saved["batch_size"] == 32 and saved["shards"] == str(sharded_root / "shards")
    artifacts = run_artifacts(flow_state.state_details.flow_run_id)
    assert "logit_scale" in str(artifacts["train-final-metrics"].data)
    assert "data:image/png;base64," in str(artifacts["train-loss-curve"].data)


def test_killed_run_resumes_to_the_same_end(flow_run: dict, sharded_root: Path, tmp_path):
    """SIGKILL every process of a run after its first checkpoint; resume it."""
    reference = read_metrics(sharded_root / "train")
    config = yaml.safe_load((sharded_root / "train" / "config.yaml").read_text())
    config["output"] = str(tmp_path / "train")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = torchrun(path)
    wait_for(tmp_path / "train" / "checkpoints" / "step_8.pt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (tmp_path / "train" / "summary.json").exists(), "killed after it finished"
    out = finish(torchrun(path))
    assert "resumed from" in out
    summary = yaml.safe_load((tmp_path / "train" / "summary.json").read_text())
    assert (summary["step"], summary["samples_seen"]) == (24, 24 * 64)
    resumed = read_metrics(tmp_path / "train")
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for got, want in zip(resumed, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-4), got["step"]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9)


def test_shards_on_s3_train_the_same_loss_curve(
    flow_run: dict, sharded_root: Path, tmp_path: Path, s3_server, s3_bucket: str
) -> None:
    """The same run with its shards read from, and its output written to, S3 (moto_server):
    every logged loss equals the local run's, so storage does not change what is learned."""
    import boto3

    upload_tree(sharded_root / "shards", s3_server.endpoint_url, s3_bucket, "shards")
    config = yaml.safe_load((sharded_root / "train" / "config.yaml").read_text())
    config["shards"] = f"s3://{s3_bucket}/shards"
    config["output"] = f"s3://{s3_bucket}/train"
    config["storage_options"] = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    finish(torchrun(path))
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    body = client.get_object(Bucket=s3_bucket, Key="train/metrics.jsonl")["Body"].read()
    on_s3 = [json.loads(line) for line in body.decode().splitlines()]
    local = read_metrics(sharded_root / "train")
    assert [r["step"] for r in on_s3] == [r["step"] for r in local]
    assert [r["loss"] for r in on_s3] == pytest.approx([r["loss"] for r in local], abs=1e-6)


def test_checkpoint_loads_into_open_clip_with_the_same_embeddings(
    flow_run: dict, sharded_root: Path
) -> None:
    import open_clip

    from model import create_model, get_tokenizer, load_checkpoint
    from model.config import CONFIG_DIR

    latest = sharded_root / "train" / "checkpoints" / "latest.pt"
    ours = create_model("clipflow-tiny").eval()
    extra = load_checkpoint(ours, latest)  # weights_only: no pickled code in our checkpoints
    assert extra["step"] == 24 and extra["model_config"]["embed_dim"] == 64
    open_clip.add_model_config(CONFIG_DIR / "clipflow-tiny.json")
    theirs = open_clip.create_model("clipflow-tiny").eval()
    theirs.load_state_dict(torch.load(latest, weights_only=True)["state_dict"], strict=True)
    images = torch.randn(4, 3, 28, 28)
    texts = get_tokenizer("clipflow-tiny")(["a photo of a bag", "a sneaker", "a coat", "x"])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), theirs.encode_image(images))
        torch.testing.assert_close(ours.encode_text(texts), theirs.encode_text(texts))


def test_failing_training_fails_the_flow_with_the_log_tail(
    sharded_root: Path, prefect_harness: None
) -> None:
    """4 shards, 2 ranks x 3 workers and sampling: split -> a clear error, no hang."""
    from flows.train import train_flow
    from tasks.train.launcher import TrainingFailed

    config = pipeline_config(sharded_root, workers=3, sampling="split")
    with pytest.raises(TrainingFailed) as failure:
        train_flow(config=config, force=True)
    message = str(failure.value)
    assert "torchrun exited with code" in message
    assert "4 shards cannot be split over 2 ranks x 3 workers = 6 readers" in message
