"""``curate.faiss_device``: ``gpu`` without a GPU refuses before curate writes anything;
``auto`` and ``cpu`` run where FAISS can. (The GPU-against-CPU identity of the searches runs
where a GPU is: ``bench/bench_faiss_gpu.py``.)"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from tasks.core.storage import Storage
from tasks.curate.faiss_device import FaissDeviceError, gpu_count, on_device, uses_gpu
from tasks.curate.stage import curate
from tests.curate.conftest import DownloadedWeb


def test_the_device_follows_the_setting_and_what_faiss_sees() -> None:
    assert uses_gpu("cpu") is False
    assert uses_gpu("auto") is (gpu_count() > 0)
    index = faiss.IndexFlatIP(8)
    assert on_device(index, "cpu") is index
    if gpu_count() == 0:
        assert on_device(index, "auto") is index
        with pytest.raises(FaissDeviceError, match=r"curate\.faiss_device is 'gpu'"):
            uses_gpu("gpu")
    else:  # a GPU build that sees a device: the index moves and searches the same
        x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
        moved = on_device(faiss.IndexFlatIP(8), "gpu")
        index.add(x)
        moved.add(x)
        assert (moved.search(x, 5)[1] == index.search(x, 5)[1]).all()


def test_curate_asked_for_a_gpu_it_has_not_refuses_before_writing(
    downloaded_web: DownloadedWeb, tmp_path: Path
) -> None:
    root = downloaded_web.root_with_download(tmp_path / "root")
    cfg = downloaded_web.config(root, faiss_device="gpu")
    if gpu_count() > 0:  # a GPU machine: the setting is honoured, and curate runs
        assert curate(cfg, Storage(cfg.storage)).counts["input"] > 0
        return
    with pytest.raises(FaissDeviceError, match="install faiss-gpu"):
        curate(cfg, Storage(cfg.storage))
    assert not (root / "curate").exists()
