"""Curate's mapped per-shard tasks on real engines started here, on 127.0.0.1: a Dask
cluster (a scheduler and 2 worker processes) and a local Ray instance give the same
samples.parquet as the flow's own threads; ``execution`` is in no stage's config hash."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from prefect import flow

from flows.common import map_as_tasks
from flows.curate import curate_flow
from tasks.core.config import ConfigError, ExecutionConfig, PipelineConfig, load_config
from tasks.core.lineage import config_hash
from tasks.stages import PIPELINE, STAGES
from tests.curate.conftest import DownloadedWeb
from tests.finished_stages import record_finished

# Ray's workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_execution_is_in_no_config_hash():
    """Where mapped tasks run never makes a stage's output stale."""
    local = PipelineConfig()
    for execution in (
        ExecutionConfig(runner="dask", address="tcp://127.0.0.1:8786", workers=8),
        ExecutionConfig(runner="ray", workers=3),
    ):
        moved = local.model_copy(update={"execution": execution})
        assert {s: config_hash(moved, s) for s in STAGES} == {
            s: config_hash(local, s) for s in STAGES
        }
    assert not [s.name for s in PIPELINE if any(r.startswith("execution") for r in s.reads)]


def test_an_address_needs_an_engine():
    with pytest.raises(ConfigError, match="execution: .*set runner to dask or ray"):
        load_config({"execution": {"address": "tcp://127.0.0.1:8786"}})


def test_threads_size_the_local_runner_only():
    with pytest.raises(ConfigError, match="execution: .*threads sizes the local runner"):
        load_config({"execution": {"runner": "dask", "threads": 2}})
    with pytest.raises(ConfigError, match="execution"):
        load_config({"execution": {"threads": 0}})


def process_id(seconds: float) -> int:
    time.sleep(seconds)  # long enough that every worker takes some of the tasks
    return os.getpid()


def test_a_local_dask_cluster_runs_mapped_tasks_in_two_worker_processes(prefect_harness):
    pids = map_as_tasks("probe", ExecutionConfig(runner="dask"), process_id, [0.3] * 8)
    assert len(set(pids)) == 2 and os.getpid() not in pids


_RUNNING = threading.Lock()
_running: list[int] = [0, 0]  # now, most at once


def count_running(seconds: float) -> int:
    """Sleeps, counting how many calls run at once; returns its thread's id."""
    with _RUNNING:
        _running[0] += 1
        _running[1] = max(_running)
    time.sleep(seconds)
    with _RUNNING:
        _running[0] -= 1
    return threading.get_ident()


@flow
def _mapped_in_a_flow(threads: int | None) -> list[int]:
    return map_as_tasks("probe", ExecutionConfig(threads=threads), count_running, [0.3] * 6)


@pytest.mark.parametrize(("threads", "at_once"), [(None, 6), (1, 1), (2, 2)])
def test_local_threads_bound_the_tasks_that_run_at_once(prefect_harness, threads, at_once):
    """None: the flow's own pool runs all six at once (Prefect's default: a thread per
    task); ``threads`` caps them."""
    _running[:] = [0, 0]
    idents = _mapped_in_a_flow(threads)
    assert _running[1] == at_once
    assert len(set(idents)) == at_once


def _curated(downloaded_web: DownloadedWeb, root: Path, execution: ExecutionConfig) -> pd.DataFrame:
    downloaded_web.root_with_download(root)
    cfg = downloaded_web.config(root).model_copy(update={"execution": execution})
    record_finished(cfg, download={})
    manifest = curate_flow(config=cfg)
    assert manifest["skipped"] is False
    samples = pd.read_parquet(root / "curate" / "samples.parquet")
    samples["reasons"] = samples["reasons"].map(list)
    return samples[["key", "keep", "reasons"]].sort_values("key", ignore_index=True)


@pytest.fixture(scope="module")
def local_samples(prefect_harness, downloaded_web, tmp_path_factory) -> pd.DataFrame:
    """Curate's table with the flow's own task runner: the reference."""
    return _curated(downloaded_web, tmp_path_factory.mktemp("local"), ExecutionConfig())


def test_curate_on_a_dask_cluster_matches_the_local_runner(
    local_samples, downloaded_web: DownloadedWeb, tmp_path: Path
):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        on_dask = _curated(
            downloaded_web,
            tmp_path,
            ExecutionConfig(runner="dask", address=cluster.scheduler_address),
        )
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    shards = len(list(tmp_path.glob("download/0*.parquet")))
    assert len(executed) == 2 and sum(executed.values()) == shards  # both workers' tasks
    pd.testing.assert_frame_equal(on_dask, local_samples)
    assert local_samples["keep"].any() and not local_samples["keep"].all()


def test_curate_on_one_local_thread_matches_the_flows_pool(
    local_samples, downloaded_web: DownloadedWeb, tmp_path: Path
):
    on_one = _curated(downloaded_web, tmp_path, ExecutionConfig(threads=1))
    pd.testing.assert_frame_equal(on_one, local_samples)


def test_a_local_ray_instance_runs_mapped_tasks_in_its_own_workers(prefect_harness):
    """(tests/foundation/test_loopback_only.py runs this one under strace: a local Ray talks
    to 127.0.0.1 only, see tasks/core/local_ray.py.)"""
    pids = map_as_tasks("probe", ExecutionConfig(runner="ray"), process_id, [0.3] * 4)
    assert os.getpid() not in pids


def test_curate_on_a_local_ray_instance_matches_the_local_runner(
    local_samples, downloaded_web: DownloadedWeb, tmp_path: Path
):
    on_ray = _curated(downloaded_web, tmp_path, ExecutionConfig(runner="ray"))
    pd.testing.assert_frame_equal(on_ray, local_samples)
