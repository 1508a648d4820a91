"""The shard stage as a Prefect flow: runs under its manifest, then skips when up to date."""

from __future__ import annotations

import json
from pathlib import Path

from flows.shard import shard_flow
from tests.finished_stages import record_finished
from tests.shard.conftest import load_kept, local_config


def test_shard_flow_runs_then_skips(prefect_harness, local_root: Path) -> None:
    cfg = local_config(local_root)
    # The copied curate outputs, recorded as a finished curate stage at this root.
    curate = json.loads((local_root / "_manifests" / "curate.json").read_text())
    record_finished(cfg, curate=curate["counts"])
    config = cfg.model_dump(mode="json")
    first = shard_flow(config=config)
    kept = len(load_kept(local_root))
    assert first["skipped"] is False and first["counts"]["samples"] == kept
    stage_manifest = json.loads((local_root / "_manifests" / "shard.json").read_text())
    assert stage_manifest["outputs"]["manifest"].endswith("shards/manifest.json")
    again = shard_flow(config=config)
    assert again["skipped"] is True
    forced = shard_flow(config=config, force=True)
    assert (
        forced["skipped"] is False
        and forced["extra"]["shards_reused"] == forced["counts"]["shards"]
    )
