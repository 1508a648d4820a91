"""The train stage as a Prefect flow; what it does is its record in ``tasks/stages.py``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParam, run_stage_flow
from tasks.stages import stage


@flow(name="train", description=stage("train").summary)
def train_flow(config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Run the train stage unless it is up to date (``force`` reruns it from scratch)."""
    return run_stage_flow("train", config, force)
