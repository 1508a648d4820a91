"""The crawl stage as a Prefect flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParam, run_stage_flow
from tasks.crawl.stage import crawl


@flow(name="crawl")
def crawl_flow(config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Crawl the seed sites and read the WAT/WARC files into candidate (url, caption) pairs."""
    return run_stage_flow("crawl", config, crawl, force)
