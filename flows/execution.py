"""The Prefect task runner that ``execution`` names, for a stage's mapped per-shard tasks.

``local`` keeps the flow's own thread pool, or a pool of ``execution.threads`` threads.
``dask`` and ``ray`` use the real integrations (prefect-dask, prefect-ray): a cluster at
``execution.address``, or a local one started on 127.0.0.1 (no dashboard) for the mapped
work of one stage run and stopped after it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect.task_runners import TaskRunner

from tasks.core.config import ExecutionConfig
from tasks.core.local_ray import local_ray_environment


def runner_environment(execution: ExecutionConfig) -> AbstractContextManager[None]:
    """What must surround the runner's whole life: a local Ray's settings
    (``tasks.core.local_ray``: loopback only, no usage reports, no cloud probe)."""
    if execution.runner == "ray" and not execution.address:
        return local_ray_environment()
    return nullcontext()


def task_runner(execution: ExecutionConfig) -> TaskRunner[Any] | None:
    """The task runner for ``execution``; None for ``local`` without ``threads`` (the flow's
    own runner)."""
    if execution.runner == "local" and execution.threads is not None:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=execution.threads)
    if execution.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if execution.address:
            return DaskTaskRunner(address=execution.address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": execution.workers,
                "threads_per_worker": 1,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": None,
            }
        )
    if execution.runner == "ray":
        from prefect_ray import RayTaskRunner

        if execution.address:
            return RayTaskRunner(address=execution.address)
        # No dashboard, and loopback as the node's address, within runner_environment.
        return RayTaskRunner(
            init_kwargs={
                "num_cpus": execution.workers,
                "include_dashboard": False,
                "dashboard_host": "127.0.0.1",
                "_node_ip_address": "127.0.0.1",
            }
        )
    return None


def describe(execution: ExecutionConfig) -> str:
    """Where mapped tasks run, in words, for the logs."""
    if execution.runner == "local":
        if execution.threads is None:
            return "threads of the flow process"
        return (
            f"{execution.threads} thread{'s' if execution.threads > 1 else ''} of the flow process"
        )
    where = f"at {execution.address}" if execution.address else "started on 127.0.0.1"
    unit = "worker processes" if execution.runner == "dask" else "CPUs"
    size = "" if execution.address else f", {execution.workers} {unit}"
    return f"a {execution.runner.capitalize()} cluster {where}{size}"
