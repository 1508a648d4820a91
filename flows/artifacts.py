"""Each stage's Prefect artifacts, named by its ``Stage.publish``: called with the manifest
after a run, or with the error when the run failed (so the UI shows why)."""

from __future__ import annotations

import base64
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.curate.gate import QualityGateFailed


def publish_curate(
    cfg: PipelineConfig,
    storage: Storage,
    manifest: dict[str, Any] | None,
    error: Exception | None,
) -> None:
    """The data-quality report, also when the gate stopped the run."""
    if isinstance(error, QualityGateFailed):
        publish_report(error.report.summary, error.report.uris)
    elif manifest is not None:
        report = manifest["outputs"]["report"]
        publish_report(storage.read_json(report["summary"]), report)


def publish_report(summary: dict[str, Any], uris: dict[str, str]) -> None:
    """The report on the flow run: funnel table, summary markdown, link to the Data Docs."""
    create_table_artifact(
        key="curate-funnel",
        table=[s for s in summary["funnel"] if s["step"] == "input" or s["dropped"]],
        description="curate funnel: rows remaining after each rule",
    )
    gate = summary["gate"]
    failed = [e for e in gate["expectations"] if not e["success"]]
    lines = [
        f"## curate: {summary['kept']} of {summary['input']} kept",
        "",
        f"- quality gate: **{'passed' if gate['success'] else 'FAILED'}**"
        + (f" ({len(failed)} expectations failed)" if failed else ""),
        f"- duplicate rate: {summary['duplicate_rate']:.3f}",
        f"- eval-contaminated samples dropped: {summary['eval_contaminated']}",
        f"- shards: {summary['shards']} ({summary['truncated_shards']} truncated)",
        "",
        "| reason | dropped (first reason) | flagged |",
        "|---|---|---|",
        *(
            f"| {rule} | {n} | {summary['flagged_by_rule'][rule]} |"
            for rule, n in summary["dropped_by_reason"].items()
            if summary["flagged_by_rule"][rule]
        ),
        "",
        f"Report: `{uris.get('summary', '')}`",
    ]
    create_markdown_artifact(
        key="curate-summary", markdown="\n".join(lines), description="curate summary"
    )
    create_link_artifact(
        key="curate-data-docs",
        link=_browsable(uris["data_docs"]),
        link_text="great-expectations Data Docs",
        description="curate data-quality report",
    )


def _browsable(uri: str) -> str:
    return uri if "://" in uri else f"file://{uri}"


def publish_train(
    cfg: PipelineConfig,
    storage: Storage,
    manifest: dict[str, Any] | None,
    error: Exception | None,
) -> None:
    """The final metrics as a table and the loss curve as an inline image."""
    if manifest is None:
        return
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


def publish_evaluate(
    cfg: PipelineConfig,
    storage: Storage,
    manifest: dict[str, Any] | None,
    error: Exception | None,
) -> None:
    """The results table (one row per dataset) as a table and a markdown artifact."""
    if manifest is None:
        return
    results = storage.read_json(storage.uri("eval", "results.json"))["results"]
    table = [{"dataset": r["dataset"], "task": r["task"], **r["metrics"]} for r in results]
    create_table_artifact(
        key="evaluate-results", table=table, description="evaluation metrics (fractions)"
    )
    markdown = storage.read_bytes(storage.uri("eval", "results.md")).decode()
    create_markdown_artifact(
        key="evaluate-results-md", markdown=markdown, description="evaluation results"
    )
