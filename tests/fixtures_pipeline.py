"""One small pipeline run on the demo web per test session (crawl -> evaluate, ~300 samples,
the tiny model): the end-to-end test checks it, and the inspect app's tests serve it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.benchmark_sets import build_set
from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage


@pytest.fixture(scope="session")
def fashion_eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "fashion_mnist"
    build_set("fashion_mnist", out, train_samples=100)
    return out


def pipeline_config(root: Path, demo_web: Any, eval_set: Path, **overrides: Any) -> dict:
    config = {
        "storage": {"root": str(root)},
        "crawl": {"seeds": [demo_web.url + "/"], "allow_private_networks": True, "max_pages": 300},
        "download": {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 28},
        "curate": {"decontaminate": True, "gate": "fail"},
        "shard": {"samples_per_shard": 64},
        "train": {
            "model": "clipflow-tiny", "batch_size": 32, "samples": 8192, "lr": 1.0e-3, "warmup": 10,
            "precision": "fp32", "nproc_per_node": 1, "workers": 0, "log_every_steps": 2,
        },
        "evaluate": {
            "batch_size": 256,
            "datasets": [{"name": "fashion_mnist", "path": str(eval_set),
                          "task": "zeroshot_classification"}],
        },
    }  # fmt: skip
    for section, values in overrides.items():
        config[section] = {**config[section], **values}
    return config


@dataclass(frozen=True)
class PipelineRun:
    """A finished pipeline run: its config (as passed to the flow), the typed config, its
    storage, and the flow's final state (``state.result()`` is each stage's manifest)."""

    config: dict[str, Any]
    cfg: PipelineConfig
    storage: Storage
    state: Any


@pytest.fixture(scope="session")
def small_pipeline(prefect_harness, demo_web, fashion_eval_set, tmp_path_factory) -> PipelineRun:
    """The whole pipeline, once per session. Tests may rerun stages on it (the run stays
    complete) but must not change its files; copy the root to change anything."""
    from flows.pipeline import pipeline_flow

    config = pipeline_config(tmp_path_factory.mktemp("pipeline") / "root", demo_web,
                             fashion_eval_set)  # fmt: skip
    cfg = PipelineConfig.model_validate(config)
    state = pipeline_flow(config=config, return_state=True)
    return PipelineRun(config, cfg, Storage(cfg.storage), state)
