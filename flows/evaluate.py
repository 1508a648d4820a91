"""The evaluate stage as a Prefect flow: the zero-shot suite, results published as artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import ConfigParam, as_config, run_stage_flow
from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.evaluate.stage import run_evaluate


def with_overrides(
    config: ConfigParam, checkpoint: str | None = None, model: str | None = None
) -> PipelineConfig:
    """The effective config: ``--checkpoint`` / ``--model`` win over ``evaluate.*``, and so
    take part in the stage's config hash (a different checkpoint is a different result)."""
    cfg = as_config(config)
    updates = {k: v for k, v in (("checkpoint", checkpoint), ("model", model)) if v is not None}
    if not updates:
        return cfg
    return cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=updates)})


def publish_results(cfg: PipelineConfig) -> None:
    """The results table (one row per dataset) as a table and a markdown artifact."""
    storage = Storage(cfg.storage)
    results = storage.read_json(storage.uri("eval", "results.json"))["results"]
    table = [{"dataset": r["dataset"], "task": r["task"], **r["metrics"]} for r in results]
    create_table_artifact(
        key="evaluate-results", table=table, description="evaluation metrics (fractions)"
    )
    markdown = storage.read_bytes(storage.uri("eval", "results.md")).decode()
    create_markdown_artifact(
        key="evaluate-results-md", markdown=markdown, description="evaluation results"
    )


@flow(name="evaluate")
def evaluate_flow(
    config: ConfigParam,
    force: bool = False,
    checkpoint: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (default: the train stage's latest) on the configured datasets."""
    cfg = with_overrides(config, checkpoint, model)
    manifest = run_stage_flow("evaluate", cfg, run_evaluate, force)
    if not manifest.get("skipped"):
        publish_results(cfg)
    return manifest
