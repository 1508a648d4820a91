"""The download stage as a Prefect flow; what it does is its record in ``tasks/stages.py``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParam, run_stage_flow
from tasks.stages import stage


@flow(name="download", description=stage("download").summary)
def download_flow(config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Run the download stage unless it is up to date (``force`` reruns it from scratch)."""
    return run_stage_flow("download", config, force)
