"""The whole DAG: crawl -> download -> curate -> shard -> train -> evaluate, as subflows."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.common import ConfigParam, as_config, load_flow
from tasks.core.config import STAGES, PipelineConfig
from tasks.core.manifest import read_manifest
from tasks.core.storage import Storage


def stages_to_force(force: str | None) -> set[str]:
    """--force STAGE reruns that stage and everything downstream of it."""
    if force is None:
        return set()
    if force not in STAGES:
        raise ValueError(f"--force {force!r}: stages are {', '.join(STAGES)}")
    return set(STAGES[STAGES.index(force) :])


@flow(name="clipflow-pipeline", log_prints=True)
def pipeline_flow(
    config: ConfigParam,
    stages: list[str] | None = None,
    force: str | None = None,
) -> dict[str, Any]:
    """Run the stages in order; each is skipped when its manifest matches."""
    cfg = as_config(config)
    selected = [s for s in STAGES if stages is None or s in stages]
    forced = stages_to_force(force)
    logger = get_run_logger()
    manifests: dict[str, Any] = {}
    for stage in selected:
        logger.info("stage %s%s", stage, " (forced)" if stage in forced else "")
        manifests[stage] = load_flow(stage)(
            config=cfg.model_dump(mode="json"), force=stage in forced
        )
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=f"```\n{pipeline_summary(cfg)}\n```",
        description="funnel, training throughput and zero-shot results of this run",
    )
    return manifests


def pipeline_summary(cfg: PipelineConfig) -> str:
    """What a pipeline run produced, from the stage manifests and the evaluation results:
    per-stage time and counts, the curation funnel, training throughput, zero-shot results."""
    storage = Storage(cfg.storage)
    manifests = {stage: read_manifest(storage, stage) or {} for stage in STAGES}
    total = sum(m.get("timings", {}).get("seconds", 0.0) for m in manifests.values()) or 1.0
    lines = ["clipflow pipeline summary", "", "stage      seconds  share  counts (non-zero)"]
    for stage, manifest in manifests.items():
        seconds = manifest.get("timings", {}).get("seconds", 0.0)
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items() if v)
        lines.append(f"{stage:<9} {seconds:8.1f} {seconds / total:6.0%}  {counts}")
    curate = manifests["curate"].get("counts", {})
    if curate:
        lines.append(f"funnel: {curate.get('input')} downloaded rows -> {curate.get('kept')} kept")
    final = manifests["train"].get("extra", {}).get("final", {})
    if "samples_per_s" in final:
        lines.append(f"training: {final['samples_per_s']:.0f} samples/s at the last step")
    curve = storage.uri("train", "loss_curve.png")
    if storage.exists(curve):
        lines.append(f"loss curve: {curve}")
    results_uri = storage.uri("eval", "results.json")
    if storage.exists(results_uri):
        for row in storage.read_json(results_uri)["results"]:
            metrics = row["metrics"]
            key = "acc1" if "acc1" in metrics else next(iter(metrics))
            lines.append(f"{row['dataset']:<20} {row['task']:<24} {key} = {metrics[key]:.3f}")
    return "\n".join(lines)
