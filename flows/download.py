"""The download stage as a Prefect flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParam, run_stage_flow
from tasks.download.stage import download


@flow(name="download")
def download_flow(config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Fetch every crawl candidate with img2dataset; resume unless forced or input changed."""
    return run_stage_flow(
        "download", config, lambda cfg, storage: download(cfg, storage, force=force), force
    )
