"""The whole DAG: crawl -> download -> curate -> shard -> train -> evaluate, as subflows."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import ConfigParam, as_config, load_flow
from tasks.config import STAGES


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
    return manifests
