"""The train stage as a Prefect flow: launch torchrun, stream its log, publish its results."""

from __future__ import annotations

import base64
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from flows.common import ConfigParam, as_config, run_stage_flow
from tasks.core.storage import Storage
from tasks.train.launcher import train


@flow(name="train")
def train_flow(config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Train CLIP on the shards with torchrun (resuming a compatible earlier run); fails with
    the tail of torchrun's output when training fails."""
    logger = get_run_logger()
    manifest = run_stage_flow(
        "train",
        config,
        lambda cfg, storage: train(cfg, storage, on_line=logger.info, fresh=force),
        force,
    )
    if not manifest.get("skipped"):
        publish_artifacts(Storage(as_config(config).storage), manifest)
    return manifest


def publish_artifacts(storage: Storage, manifest: dict[str, Any]) -> None:
    """The final metrics as a table and the loss curve as an inline image."""
    final = manifest.get("extra", {}).get("final", {})
    create_table_artifact(
        key="train-final-metrics",
        table=[{"metric": k, "value": v} for k, v in final.items()],
        description="metrics at the last logged step",
    )
    curve = manifest["outputs"].get("loss_curve")
    if curve and storage.exists(curve):
        png = base64.b64encode(storage.read_bytes(curve)).decode()
        create_markdown_artifact(
            key="train-loss-curve",
            markdown=f"## training loss\n\n![loss curve](data:image/png;base64,{png})\n\n{curve}",
            description="loss and learning rate against step",
        )
