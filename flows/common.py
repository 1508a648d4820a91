"""What every stage flow shares: the config parameter, the manifest-guarded run built from
the stage's record, mapped tasks, and the counts artifact."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from flows.execution import describe, runner_environment, task_runner
from tasks.core.config import ExecutionConfig, PipelineConfig, load_config
from tasks.core.runner import run_stage
from tasks.core.stage import RunContext, load_object
from tasks.core.storage import Storage
from tasks.stages import stage

T = TypeVar("T")
R = TypeVar("R")

ConfigParam = PipelineConfig | str
"""What a flow accepts as config: the typed config (Python callers and the pipeline flow,
which pass it down without validating it again; the Prefect UI's form is built from its
schema) or the path of a YAML file (deployments in prefect.yaml, loaded once here)."""


def as_config(config: ConfigParam) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def load_flow(name: str) -> Any:
    """A stage's flow, ``flows/<stage>.py:<stage>_flow``, imported on demand (so
    ``clipflow status`` does not pay for torch)."""
    import importlib

    return getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow")


def map_as_tasks(
    stage_name: str, execution: ExecutionConfig, fn: Callable[[T], R], items: Sequence[T]
) -> list[R]:
    """Run ``fn`` over ``items`` as mapped Prefect tasks named ``<stage>-<fn>`` on the task
    runner ``execution`` names (the flow's own for ``local``) and wait for every result."""
    mapped: Task[..., Any] = task(
        name=f"{stage_name}-{fn.__name__}", cache_policy=NO_CACHE, retries=1
    )(fn)
    work = list(items)
    _logger().info("%s: %d %s tasks on %s", stage_name, len(work), fn.__name__, describe(execution))
    runner = task_runner(execution)
    if runner is None:
        return [future.result() for future in mapped.map(work)]
    parameter = next(iter(inspect.signature(fn).parameters))
    with runner_environment(execution), runner:
        return [future.result() for future in runner.map(mapped, {parameter: work})]


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    try:
        return get_run_logger()
    except Exception:  # called outside a flow run (plain Python)
        return logging.getLogger("clipflow.flows")


def run_stage_flow(name: str, config: ConfigParam, force: bool = False) -> dict[str, Any]:
    """Run one stage under its manifest guard, as its ``Stage`` record says; publish its
    counts and its own artifacts."""
    record = stage(name)
    cfg = as_config(config)
    logger = _logger()
    body = record.load_body()
    ctx = RunContext(
        force=force, log_line=logger.info, map_tasks=partial(map_as_tasks, name, cfg.execution)
    )
    publish = load_object(record.publish) if record.publish else None
    try:
        manifest = run_stage(name, cfg, lambda storage: body(cfg, storage, ctx), force=force)
    except Exception as error:
        if publish is not None:
            publish(cfg, Storage(cfg.storage), None, error)  # show why on the failed run
        raise
    if manifest.get("skipped"):
        logger.info("%s is up to date; skipped (use --force %s to rerun)", name, name)
        return manifest
    logger.info("%s finished in %.1fs", name, manifest["timings"]["seconds"])
    rows = "\n".join(f"| {k} | {v} |" for k, v in manifest.get("counts", {}).items())
    create_markdown_artifact(
        key=f"{name}-counts",
        markdown=f"## {name}\n\n| count | value |\n|---|---|\n{rows}\n",
        description=f"{name} stage counts",
    )
    if publish is not None:
        publish(cfg, Storage(cfg.storage), manifest, None)
    return manifest
