"""The curate stage as a Prefect flow: per-shard work mapped as tasks (so a Dask or Ray task
runner spreads it), the global steps in the flow, and the report as flow-run artifacts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import ConfigParam, run_stage_flow
from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.storage import Storage
from tasks.curate.gate import QualityGateFailed
from tasks.curate.stage import curate

T = TypeVar("T")
R = TypeVar("R")


def map_as_tasks(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Run ``fn`` over ``items`` as mapped Prefect tasks and wait for every result."""
    shard_task = task(name=f"curate-{fn.__name__}", cache_policy=NO_CACHE, retries=1)(fn)
    return [future.result() for future in shard_task.map(list(items))]


def _body(cfg: PipelineConfig, storage: Storage) -> StageResult:
    try:
        result = curate(cfg, storage, map_shards=map_as_tasks)
    except QualityGateFailed as failed:
        publish_report(failed.report.summary, failed.report.uris)  # show why on the failed run
        raise
    report = result.outputs["report"]
    publish_report(storage.read_json(report["summary"]), report)
    return result


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


@flow(name="curate")
def curate_flow(config: ConfigParam, force: bool = False) -> dict:
    """Filter, dedup and decontaminate the downloaded samples; gate them on data quality."""
    return run_stage_flow("curate", config, _body, force)
