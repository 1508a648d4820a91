"""The engine img2dataset's ``pyspark`` and ``ray`` distributors run on, started for the
download and stopped after it.

img2dataset finds a SparkSession active in the calling thread, or (unconfigured) makes one
with 16 GB of driver memory and Spark's defaults; its Ray distributor uses whatever
``ray.init`` made, or lets the first task start a local Ray with its dashboard. So the stage
starts the engine itself, inside the process tree img2dataset runs in, and stops it
afterwards. A ``kill -9`` of the stage takes down the JVM, Spark's Python daemon and
workers, Ray's GCS, raylet and workers within a second (measured); Ray's dashboard and
runtime-env agents, which write nothing, may outlive it.

- Spark: ``local[processes_count]`` bound to 127.0.0.1, UI off, its Python workers on this
  interpreter (the system Python has no img2dataset). ``CLIPFLOW_SPARK_MASTER`` names a
  cluster's master instead (``spark://host:7077``).
- Ray: a local Ray of ``processes_count`` CPUs on 127.0.0.1, no dashboard UI or usage stats;
  ``RAY_ADDRESS`` (Ray's own variable) names a running cluster (``ray start --head``).

Where the work runs does not change what is downloaded, so these are environment, not
config: they stay out of the stage's fingerprints. Workers get the variables the guarded
fetch needs (OpenCV's pixel cap, the S3 endpoint) from the engine's own env settings.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.core.local_ray import local_ray_environment

log = logging.getLogger(__name__)

SPARK_MASTER_ENV = "CLIPFLOW_SPARK_MASTER"
RAY_ADDRESS_ENV = "RAY_ADDRESS"

# What a worker reads from its environment: OpenCV's decode cap (read when cv2 is imported),
# fsspec's S3 endpoint, and albumentations' update check (a request to the internet).
WORKER_ENV = ("OPENCV_IO_MAX_IMAGE_PIXELS", "FSSPEC_S3_ENDPOINT_URL", "NO_ALBUMENTATIONS_UPDATE")


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in WORKER_ENV if k in os.environ}


@contextmanager
def engine_environment(distributor: str) -> Iterator[None]:
    """The environment of the process img2dataset runs in, for the whole of it: a local Ray
    needs its settings from its first import on (``tasks.core.local_ray``)."""
    if distributor == "ray" and not os.environ.get(RAY_ADDRESS_ENV):
        with local_ray_environment():
            yield
    else:
        yield


@contextmanager
def distributor_engine(distributor: str, processes_count: int) -> Iterator[None]:
    """Start the engine ``distributor`` needs (none for multiprocessing) for the block."""
    if distributor == "pyspark":
        with spark_session(processes_count):
            yield
    elif distributor == "ray":
        with ray_runtime(processes_count):
            yield
    else:
        yield


@contextmanager
def spark_session(processes_count: int) -> Iterator[None]:
    """A SparkSession, active in this thread (where img2dataset looks for it), stopped after."""
    master = os.environ.get(SPARK_MASTER_ENV) or f"local[{processes_count}]"
    local = master.startswith("local")
    python = os.environ.get("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_PYTHON", python)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the JVM binds nothing else

    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName("clipflow-download")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", python)
        .config("spark.pyspark.driver.python", sys.executable)
    )
    if local:
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    for key, value in worker_env().items():
        builder = builder.config(f"spark.executorEnv.{key}", value)
    log.info("download: starting Spark (%s)", master)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield
    finally:
        spark.stop()


@contextmanager
def ray_runtime(processes_count: int) -> Iterator[None]:
    """``ray.init`` for the block: the cluster at ``RAY_ADDRESS``, else a local Ray."""
    import ray

    address = os.environ.get(RAY_ADDRESS_ENV)
    runtime_env = {"env_vars": worker_env()}
    if address:
        log.info("download: joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env)
    else:
        log.info("download: starting a local Ray of %d CPUs", processes_count)
        ray.init(
            num_cpus=processes_count,
            include_dashboard=False,
            runtime_env=runtime_env,
            _node_ip_address="127.0.0.1",
        )
    try:
        yield
    finally:
        ray.shutdown()
