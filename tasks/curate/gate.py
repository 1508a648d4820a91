"""The data-quality gate (a great-expectations suite on the curated table) and the report
under ``{root}/curate/report/``: GX Data Docs (HTML), ``summary.json`` and PNG plots.

The gate decides the stage: with ``gate: fail`` a failed suite raises ``QualityGateFailed``
after the report is written (so people can read why) and before the stage's manifest is,
so no training compute is spent on the table.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import duckdb
import great_expectations as gx
import pandas as pd

from tasks.core.config import CurateConfig, PipelineConfig
from tasks.core.sql import run_sql
from tasks.core.storage import Storage
from tasks.curate.plots import write_plots
from tasks.curate.rules import RULES, funnel_counts

log = logging.getLogger(__name__)

SUITE_NAME = "clipflow-curate"
_DOCS_SUBDIR = os.path.join("gx", "uncommitted", "data_docs", "local_site")


@dataclass
class Report:
    """The written report: its summary (as in summary.json) and the URIs of its files."""

    summary: dict[str, Any]
    uris: dict[str, str] = field(default_factory=dict)

    def raise_if_failed(self, gate: str) -> None:
        """Raise QualityGateFailed if the gate failed and config says ``gate: fail``."""
        result = self.summary["gate"]
        if result["success"]:
            return
        failed = "; ".join(
            f"{e['expectation']}({e['column'] or 'table'}): observed {e['observed']}"
            for e in result["expectations"]
            if not e["success"]
        )
        message = f"curate quality gate failed ({self.uris.get('data_docs', '')}): {failed}"
        if gate == "fail":
            raise QualityGateFailed(message, self)
        log.warning("%s (curate.gate=warn: continuing)", message)


class QualityGateFailed(RuntimeError):
    """The curated table failed its great-expectations suite; the message lists why and
    ``report`` holds the written report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def expectations(cfg: CurateConfig) -> list[Any]:
    """The suite, thresholds from config: table-level rates over every row, and
    distributions over the kept rows (the kept_* columns are NULL elsewhere)."""
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToNotBeNull(column="key"),
        e.ExpectColumnValuesToBeUnique(column="kept_key"),
        e.ExpectColumnMeanToBeBetween(column="kept", min_value=cfg.gate_min_kept_fraction),
        e.ExpectColumnMeanToBeBetween(
            column="duplicate", min_value=0, max_value=cfg.gate_max_duplicate_fraction
        ),
        e.ExpectColumnValuesToNotBeNull(
            column="caption_present", mostly=1.0 - cfg.gate_max_null_caption_fraction
        ),
        e.ExpectColumnValueLengthsToBeBetween(
            column="kept_caption", min_value=cfg.min_caption_chars, max_value=cfg.max_caption_chars
        ),
        e.ExpectColumnMedianToBeBetween(
            column="kept_caption_chars", min_value=cfg.gate_min_median_caption_chars
        ),
        e.ExpectColumnValuesToBeBetween(column="kept_min_side", min_value=cfg.min_image_side),
        e.ExpectColumnValuesToBeBetween(
            column="kept_aspect_ratio", min_value=1.0, max_value=cfg.max_aspect_ratio
        ),
    ]


def run_gate(frame: pd.DataFrame, cfg: CurateConfig, workdir: str) -> tuple[dict[str, Any], str]:
    """Validate ``frame`` with the suite through a checkpoint that builds Data Docs in
    ``workdir``. Returns (gate result for summary.json, local Data Docs folder)."""
    context = gx.get_context(mode="file", project_root_dir=workdir)
    batch = (
        context.data_sources.add_pandas("curate")
        .add_dataframe_asset("samples")
        .add_batch_definition_whole_dataframe("curated")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for expectation in expectations(cfg):
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
            result_format="SUMMARY",
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    outcomes = [
        {
            "expectation": config.type,
            "column": config.kwargs.get("column"),
            "success": bool(r.success),
            "observed": _observed(r.result),
        }
        for run in result.run_results.values()
        for r in run.results
        if (config := r.expectation_config) is not None
    ]
    return {"success": bool(result.success), "expectations": outcomes}, os.path.join(
        workdir, _DOCS_SUBDIR
    )


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        value = result["observed_value"]
        return float(value) if isinstance(value, int | float) else value
    return {"unexpected_percent": result.get("unexpected_percent")}


def build_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """summary.json without the gate: input, kept, dropped_by_reason (each dropped row under
    its first reason, so kept + sum == input), flagged_by_rule (every rule that fired) and
    the funnel (rows remaining after each rule, in rule order)."""
    cursor = run_sql(con, "curate/summary_stats")
    names = [d[0] for d in cursor.description]
    stats = dict(zip(names, cursor.fetchone() or (), strict=True))
    counts = funnel_counts(con)
    remaining = int(stats["input"])
    funnel = [{"step": "input", "dropped": 0, "remaining": remaining}]
    for rule in RULES:
        remaining -= counts[rule]["first"]
        funnel.append({"step": rule, "dropped": counts[rule]["first"], "remaining": remaining})
    summary = {
        **{k: (float(v) if isinstance(v, float) else v) for k, v in stats.items()},
        "dropped_by_reason": {rule: counts[rule]["first"] for rule in RULES},
        "flagged_by_rule": {rule: counts[rule]["any"] for rule in RULES},
        "funnel": funnel,
        "counting": "a dropped row counts once, under its first reason in rule order; "
        "samples.parquet `reasons` lists every rule that drops it",
    }
    summary["duplicate_rate"] = stats["duplicates"] / stats["input"] if stats["input"] else 0.0
    if remaining != stats["kept"]:
        raise RuntimeError(
            f"curate accounting broken: funnel ends at {remaining}, kept {stats['kept']}"
        )
    return summary


def write_report(
    con: duckdb.DuckDBPyConnection,
    cfg: PipelineConfig,
    storage: Storage,
    report_uri: str,
    workdir: str,
    duplicate_pairs: dict[str, int],
) -> Report:
    """Run the gate, draw the plots and write summary.json, all under ``report_uri``.
    ``duplicate_pairs``: per dedup rule, how many duplicate pairs it found."""
    summary = build_summary(con)
    summary["duplicate_pairs"] = duplicate_pairs
    frame = run_sql(con, "curate/gate_frame").df()
    summary["gate"], docs_dir = run_gate(frame, cfg.curate, os.path.join(workdir, "gx"))
    report = Report(summary)
    report.uris["data_docs"] = _upload_tree(storage, docs_dir, f"{report_uri}/data_docs")
    plots_dir = os.path.join(workdir, "plots")
    for name, path in write_plots(con, storage, summary, plots_dir).items():
        report.uris[name] = f"{report_uri}/{os.path.basename(path)}"
        storage.write_file(path, report.uris[name])
    report.uris["summary"] = f"{report_uri}/summary.json"
    storage.write_json(report.uris["summary"], summary)
    return report


def _upload_tree(storage: Storage, local_dir: str, uri: str) -> str:
    """Copy a local folder under ``uri``; returns the URI of its index.html."""
    for folder, _, files in os.walk(local_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local_dir).replace(os.sep, "/")
            storage.write_file(os.path.join(folder, name), f"{uri}/{rel}")
    return f"{uri}/index.html"
