"""The shard stage as a Prefect flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParam, run_stage_flow
from tasks.shard.stage import shard


@flow(name="shard")
def shard_flow(config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Reshard the kept samples into verified WebDataset shards; resume unless forced."""
    return run_stage_flow("shard", config, shard, force)
