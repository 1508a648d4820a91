"""The pipeline flow end to end on the small demo web, under one Prefect test harness:
every stage's manifest and artifacts, a rerun that skips everything, --force curate, and a
failed stage that a rerun resumes without redoing the stages before it."""

from __future__ import annotations

import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
)

from demo.benchmark_sets import build_set
from flows.pipeline import pipeline_flow
from tasks.core.config import PipelineConfig
from tasks.core.manifest import read_manifest
from tasks.core.storage import Storage
from tasks.stages import PIPELINE, STAGES


@pytest.fixture(scope="module")
def fashion_eval_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "fashion_mnist"
    build_set("fashion_mnist", out, train_samples=100)
    return out


def pipeline_config(root, demo_web, eval_set, **overrides) -> dict:
    config = {
        "storage": {"root": str(root)},
        "crawl": {"seeds": [demo_web.url + "/"], "allow_private_networks": True, "max_pages": 300},
        "download": {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 28},
        "curate": {"decontaminate": True, "gate": "fail"},
        "shard": {"samples_per_shard": 64},
        "train": {
            "model": "clipflow-tiny", "batch_size": 32, "samples": 256, "warmup": 2,
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


async def _artifact_keys_by_flow() -> dict[str, set[str]]:
    async with get_client() as client:
        keys: dict[str, set[str]] = {}
        for stage in [*STAGES, "clipflow-pipeline"]:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[stage]))
            )
            artifacts = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in runs]}),
            )
            keys[stage] = {a.key for a in artifacts if a.key}
        return keys


def test_pipeline_end_to_end_rerun_and_force(prefect_harness, demo_web, fashion_eval_set, tmp_path):
    config = pipeline_config(tmp_path / "root", demo_web, fashion_eval_set)
    storage = Storage(PipelineConfig.model_validate(config).storage)

    first = pipeline_flow(config=config)
    assert [s for s in STAGES if first[s]["skipped"]] == []
    for stage in STAGES:
        assert read_manifest(storage, stage) is not None, stage
    assert storage.exists(storage.uri("eval", "results.json"))
    keys = asyncio.run(_artifact_keys_by_flow())
    for record in PIPELINE:  # the counts, and what the stage's record says it publishes
        assert {f"{record.name}-counts", *record.artifacts} <= keys[record.name], keys
    assert "pipeline-summary" in keys["clipflow-pipeline"]

    second = pipeline_flow(config=config)
    assert [s for s in STAGES if not second[s]["skipped"]] == []

    forced = pipeline_flow(config=config, force="curate")
    assert [s for s in STAGES if not forced[s]["skipped"]] == [
        "curate",
        "shard",
        "train",
        "evaluate",
    ]


def test_failed_stage_stops_the_dag_and_a_rerun_resumes_there(
    prefect_harness, demo_web, fashion_eval_set, tmp_path
):
    strict = pipeline_config(
        tmp_path / "root", demo_web, fashion_eval_set, curate={"gate_min_kept_fraction": 1.0}
    )
    storage = Storage(PipelineConfig.model_validate(strict).storage)
    with pytest.raises(Exception, match=r"(?i)gate|expectation|quality"):
        pipeline_flow(config=strict, stages=["crawl", "download", "curate", "shard"])
    assert read_manifest(storage, "download") is not None
    assert read_manifest(storage, "curate") is None and read_manifest(storage, "shard") is None

    fixed = pipeline_config(tmp_path / "root", demo_web, fashion_eval_set)
    resumed = pipeline_flow(config=fixed, stages=["crawl", "download", "curate", "shard"])
    assert resumed["crawl"]["skipped"] and resumed["download"]["skipped"]
    assert not resumed["curate"]["skipped"] and not resumed["shard"]["skipped"]
