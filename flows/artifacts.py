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
        publish_report(cfg, storage, error.report.summary, error.report.uris)
    elif manifest is not None:
        report = manifest["outputs"]["report"]
        publish_report(cfg, storage, storage.read_json(report["summary"]), report)


DATA_DOCS = "files/curate/report/data_docs/index.html"
"""The Data Docs' page in ``clipflow inspect``, which serves them over HTTP from local or S3
storage alike (a presigned URL would put a signature into the artifact, which the run
records keep free of secrets)."""


REPORT_PLOTS = (
    ("funnel", "funnel"),
    ("caption_length", "caption lengths"),
    ("image_size", "image sizes"),
    ("duplicates", "dropped duplicates beside what they duplicate"),
    ("near_duplicates", "near-duplicate candidates closest to the threshold"),
)


def inline_png(storage: Storage, uri: str | None, alt: str) -> str:
    """A markdown image with the PNG at ``uri`` inline (a data URI: the Prefect UI shows it
    without reaching the storage); empty when there is none."""
    if not uri or not storage.exists(uri):
        return ""
    png = base64.b64encode(storage.read_bytes(uri)).decode()
    return f"![{alt}](data:image/png;base64,{png})"


def publish_report(
    cfg: PipelineConfig, storage: Storage, summary: dict[str, Any], uris: dict[str, str]
) -> None:
    """The report on the flow run: funnel table, summary markdown with the plots inline,
    and links to this run's pages in ``clipflow inspect`` (the Data Docs among them)."""
    create_table_artifact(
        key="curate-funnel",
        table=[s for s in summary["funnel"] if s["step"] == "input" or s["dropped"]],
        description="curate funnel: rows remaining after each rule",
    )
    gate = summary["gate"]
    failed = [e for e in gate["expectations"] if not e["success"]]
    inspect = cfg.inspect.base_url
    lines = [
        f"## curate: {summary['kept']} of {summary['input']} kept",
        "",
        f"- quality gate: **{'passed' if gate['success'] else 'FAILED'}**"
        + (f" ({len(failed)} expectations failed)" if failed else ""),
        f"- duplicate rate: {summary['duplicate_rate']:.3f}",
        f"- eval-contaminated samples dropped: {summary['eval_contaminated']}",
        f"- shards: {summary['shards']} ({summary['truncated_shards']} truncated)",
        f"- browse the dropped samples of each rule: [{inspect}/]({inspect}/) "
        f"(`clipflow inspect CONFIG`), [Data Docs]({inspect}/{DATA_DOCS})",
        "",
        "| reason | dropped (first reason) | flagged |",
        "|---|---|---|",
        *(
            f"| [{rule}]({inspect}/rule/{rule}) | {n} | {summary['flagged_by_rule'][rule]} |"
            for rule, n in summary["dropped_by_reason"].items()
            if summary["flagged_by_rule"][rule]
        ),
        "",
        *(
            f"### {title}\n\n{inline_png(storage, uris.get(name), title)}\n"
            for name, title in REPORT_PLOTS
            if uris.get(name)
        ),  # fmt: skip
        f"Report: `{uris.get('summary', '')}`",
    ]
    create_markdown_artifact(
        key="curate-summary", markdown="\n".join(lines), description="curate summary"
    )
    create_link_artifact(
        key="curate-data-docs",
        link=f"{inspect}/{DATA_DOCS}",
        link_text="great-expectations Data Docs (served by clipflow inspect)",
        description="curate data-quality report",
    )


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
    image = inline_png(storage, curve, "loss curve")
    if image:
        create_markdown_artifact(
            key="train-loss-curve",
            markdown=f"## training loss\n\n{image}\n\n{curve}\n\nSearch the training images "
            f"with this model: {cfg.inspect.base_url}/search (`clipflow inspect CONFIG`, once the "
            "evaluate stage has built its index)",
            description="loss and learning rate against step",
        )


def publish_evaluate(
    cfg: PipelineConfig,
    storage: Storage,
    manifest: dict[str, Any] | None,
    error: Exception | None,
) -> None:
    """The results table (one row per dataset) as a table, and as markdown with each
    classification dataset's confusion matrix inline and links to its inspect page."""
    if manifest is None:
        return
    results = storage.read_json(storage.uri("eval", "results.json"))["results"]
    table = [{"dataset": r["dataset"], "task": r["task"], **r["metrics"]} for r in results]
    create_table_artifact(
        key="evaluate-results", table=table, description="evaluation metrics (fractions)"
    )
    markdown = storage.read_bytes(storage.uri("eval", "results.md")).decode()
    inspect = cfg.inspect.base_url
    for r in results:
        matrix = storage.uri("eval", r["dataset"], "confusion_matrix.png")
        if r["task"] == "zeroshot_classification":
            markdown += (
                f"\n### {r['dataset']}\n\nPer-class accuracy and the most confused examples: "
                f"[{inspect}/eval/{r['dataset']}]({inspect}/eval/{r['dataset']})\n\n"
                f"{inline_png(storage, matrix, r['dataset'] + ' confusion matrix')}\n"
            )
    markdown += (
        f"\nSearch the training images with this checkpoint: [{inspect}/search]({inspect}/search)\n"
    )
    create_markdown_artifact(
        key="evaluate-results-md", markdown=markdown, description="evaluation results"
    )
