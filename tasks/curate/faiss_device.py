"""Where curate's FAISS searches run (the near-duplicate candidate index past
``near_dup_flat_max_rows`` views, SemDeDup's k-means): on the GPUs FAISS sees, or on the CPU.

``curate.faiss_device``: ``auto`` uses the GPUs when the installed FAISS is a GPU build and
sees a device, and the CPU otherwise; ``gpu`` refuses to run without one (a cluster job that
asked for GPUs must not fall back to a CPU search 50x slower without a word); ``cpu`` never
uses them. The GPU build is an install choice (README, "GPU FAISS"): ``faiss-gpu`` replaces
``faiss-cpu`` in the environment, with the same version and API, so each search gives the
same pairs wherever it runs (``bench/bench_faiss_gpu.py`` checks that on a GPU machine).
"""

from __future__ import annotations

import logging
from typing import Literal

import faiss

log = logging.getLogger(__name__)

FaissDevice = Literal["auto", "cpu", "gpu"]


class FaissDeviceError(RuntimeError):
    """``curate.faiss_device: gpu`` where FAISS sees no GPU."""


def gpu_count() -> int:
    """GPUs the installed FAISS can use (0 for a CPU build, which lacks the call)."""
    count = getattr(faiss, "get_num_gpus", None)
    return int(count()) if count is not None else 0


def uses_gpu(device: FaissDevice) -> bool:
    """Whether searches run on the GPU under ``device``; raises FaissDeviceError for
    ``gpu`` without one."""
    if device == "cpu":
        return False
    gpus = gpu_count()
    if device == "gpu" and gpus == 0:
        raise FaissDeviceError(
            "curate.faiss_device is 'gpu' but FAISS sees no GPU (faiss "
            f"{faiss.__version__}, a CPU build or no CUDA device): install faiss-gpu "
            "(README, 'GPU FAISS') or set curate.faiss_device to auto or cpu"
        )
    return gpus > 0


def on_device(index: faiss.Index, device: FaissDevice) -> faiss.Index:
    """``index`` moved to every GPU FAISS sees (sharded) when ``device`` says so; else itself.
    Add the vectors after moving: the copy is made from what the index holds now."""
    if not uses_gpu(device):
        return index
    log.info("FAISS: %s on %d GPU(s)", type(index).__name__, gpu_count())
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, options)
