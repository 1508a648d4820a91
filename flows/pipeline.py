"""The whole DAG: crawl -> download -> curate -> shard -> train -> evaluate, as subflows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.common import ConfigParam, as_config, load_flow
from tasks.core.config import PipelineConfig
from tasks.core.lineage import check_upstream, pipeline_status, read_manifest, stale_upstream
from tasks.core.storage import Storage
from tasks.curate.stage import eval_image_thumbnails
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
    thumbnails = prefetch_eval_thumbnails(cfg, selected)
    manifests: dict[str, Any] = {}
    for name in selected:
        if name == "curate" and thumbnails is not None:
            _await_prefetch(thumbnails, logger)
        logger.info("stage %s%s", name, " (forced)" if name in forced else "")
        manifests[name] = load_flow(name)(config=cfg, force=name in forced)
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=f"```\n{pipeline_summary(cfg)}\n```",
        description="funnel, training throughput and zero-shot results of this run",
    )
    return manifests


def prefetch_eval_thumbnails(cfg: PipelineConfig, selected: list[str]) -> Future[float] | None:
    """Start making decontamination's thumbnails of the evaluation images (cached under
    ``curate/_eval_thumbs/``, ``tasks.curate.stage.eval_image_thumbnails``) in a thread, when
    curate will decontaminate after stages it can overlap with: they read the benchmark tars
    only, and crawl and download mostly wait on the network (on the demo, the thumbnails' ~9 s
    now overlap the download). The future holds the seconds it took. A daemon thread: a failed
    run does not wait for it, and what a killed one half-wrote the curate stage sweeps."""
    if "curate" not in selected or selected.index("curate") == 0:
        return None
    if not cfg.curate.decontaminate or not cfg.evaluate.datasets:
        return None
    future: Future[float] = Future()

    def work() -> None:
        started = time.monotonic()
        try:
            eval_image_thumbnails(cfg, Storage(cfg.storage))
        except BaseException as e:  # handed to the flow, which lets curate report it
            future.set_exception(e)
        else:
            future.set_result(time.monotonic() - started)

    threading.Thread(target=work, name="eval-thumbnails", daemon=True).start()
    return future


def _await_prefetch(future: Future[float], logger: Any) -> None:
    """Wait for the prefetch before curate starts. A failure only logs: curate makes the
    thumbnails itself and fails there, naming the dataset, if it must."""
    waited = time.monotonic()
    try:
        seconds = future.result()
    except Exception as e:
        logger.warning("evaluation thumbnails: the prefetch failed (%s: %s); curate makes them",
                       type(e).__name__, e)  # fmt: skip
        return
    logger.info("evaluation thumbnails: ready (%.1fs, during the stages before curate; "
                "%.1fs waited)", seconds, time.monotonic() - waited)  # fmt: skip


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
