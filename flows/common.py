"""What every stage flow shares: config coercion, the manifest-guarded run, artifacts."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from tasks.core.config import PipelineConfig, load_config
from tasks.core.manifest import StageResult, run_stage
from tasks.core.storage import Storage

ConfigParam = PipelineConfig | dict[str, Any] | str
"""What a flow accepts as config: the model (Python callers), a dict (the Prefect UI and
deployments), or a YAML path (the CLI)."""


def load_flow(stage: str) -> Any:
    """A stage's flow, ``flows/<stage>.py:<stage>_flow``, imported on demand (so
    ``clipflow status`` does not pay for torch)."""
    return getattr(importlib.import_module(f"flows.{stage}"), f"{stage}_flow")


def as_config(config: ConfigParam) -> PipelineConfig:
    return load_config(config)


def run_stage_flow(
    stage: str,
    config: ConfigParam,
    body: Callable[[PipelineConfig, Storage], StageResult],
    force: bool = False,
) -> dict[str, Any]:
    """Run one stage under its manifest guard and publish its counts as an artifact."""
    cfg = as_config(config)
    logger: logging.Logger | logging.LoggerAdapter[Any]
    try:
        logger = get_run_logger()
    except Exception:  # called outside a flow run (plain Python)
        logger = logging.getLogger(f"clipflow.{stage}")
    manifest = run_stage(stage, cfg, lambda storage: body(cfg, storage), force=force)
    if manifest.get("skipped"):
        logger.info("%s is up to date; skipped (use --force %s to rerun)", stage, stage)
    else:
        logger.info("%s finished in %.1fs", stage, manifest["timings"]["seconds"])
        counts = manifest.get("counts", {})
        rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
        create_markdown_artifact(
            key=f"{stage}-counts",
            markdown=f"## {stage}\n\n| count | value |\n|---|---|\n{rows}\n",
            description=f"{stage} stage counts",
        )
    return manifest
