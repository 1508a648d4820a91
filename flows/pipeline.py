"""The whole DAG: crawl -> download -> curate -> shard -> train -> evaluate, as subflows."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.common import ConfigParam, as_config, load_flow
from tasks.core.config import PipelineConfig
from tasks.core.lineage import check_upstream, pipeline_status, read_manifest, stale_upstream
from tasks.core.storage import Storage
from tasks.stages import STAGES, downstream, stage


def plan(
    cfg: PipelineConfig,
    stages: list[str] | None = None,
    force: str | None = None,
    with_upstream: bool = False,
) -> list[str]:
    """The stages to run, in order: all of them by default (each is skipped when up to
    date). A subset is refused while a stage it reads from is stale, naming that stage,
    unless ``with_upstream`` adds the stale stages to the run."""
    for name in [*(stages or []), *([force] if force else [])]:
        stage(name)  # an unknown name is an error that lists the stages
    if stages is None:
        return list(STAGES)
    statuses = pipeline_status(Storage(cfg.storage), cfg)
    if not with_upstream:
        check_upstream(statuses, cfg, stages)
    stale = stale_upstream(statuses, cfg, stages)
    return [s for s in STAGES if s in stages or s in stale]


@flow(name="clipflow-pipeline", log_prints=True)
def pipeline_flow(
    config: ConfigParam,
    stages: list[str] | None = None,
    force: str | None = None,
    with_upstream: bool = False,
) -> dict[str, Any]:
    """Run the stages in order; each is skipped when up to date. ``stages`` runs a subset
    (refused while an upstream stage is stale, unless ``with_upstream``); ``force`` reruns
    that stage and everything downstream of it."""
    cfg = as_config(config)
    selected = plan(cfg, stages, force, with_upstream)
    forced = set(downstream(force)) if force else set()
    logger = get_run_logger()
    manifests: dict[str, Any] = {}
    for name in selected:
        logger.info("stage %s%s", name, " (forced)" if name in forced else "")
        manifests[name] = load_flow(name)(config=cfg, force=name in forced)
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
    manifests = {name: read_manifest(storage, name) or {} for name in STAGES}
    total = sum(m.get("timings", {}).get("seconds", 0.0) for m in manifests.values()) or 1.0
    lines = ["clipflow pipeline summary", "", "stage      seconds  share  counts (non-zero)"]
    for name, manifest in manifests.items():
        seconds = manifest.get("timings", {}).get("seconds", 0.0)
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items() if v)
        lines.append(f"{name:<9} {seconds:8.1f} {seconds / total:6.0%}  {counts}")
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
