"""The curate flow under a real (temporary) Prefect server: shards mapped as tasks, the
report on the flow run as artifacts, the manifest skip, and the quality gate failing the
flow on deliberately bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.curate import curate_flow
from tasks.core.manifest import read_manifest
from tasks.core.storage import Storage
from tests.curate.conftest import DownloadedWeb
from tests.finished_stages import record_finished
from tests.fixtures_prefect import run_records


def _mark_download_done(root: Path, cfg) -> Storage:
    """The download stage's manifest, as that stage writes it last (the test web was
    downloaded with img2dataset directly)."""
    shards = sorted(p.name for p in (root / "download").glob("0*.tar"))
    record_finished(cfg, download={"shards": len(shards)})
    return Storage(cfg.storage)


def test_flow_maps_shards_as_tasks_and_publishes_the_report(
    prefect_harness, downloaded_web: DownloadedWeb, tmp_path: Path
):
    root = downloaded_web.root_with_download(tmp_path)
    cfg = downloaded_web.config(root)
    storage = _mark_download_done(root, cfg)
    state = curate_flow(config=cfg.model_dump(mode="json"), return_state=True)
    assert state.is_completed(), state.message
    artifacts, task_runs = run_records(state.state_details.flow_run_id)
    by_key = {a.key: a for a in artifacts}
    assert {"curate-summary", "curate-funnel", "curate-data-docs", "curate-counts"} <= set(by_key)
    # The Data Docs over HTTP, served by `clipflow inspect` (a file:// link opens nowhere).
    docs = "http://127.0.0.1:8770/files/curate/report/data_docs/index.html"
    assert docs in str(by_key["curate-data-docs"].data)
    summary = json.loads((root / "curate" / "report" / "summary.json").read_text())
    markdown = str(by_key["curate-summary"].data)
    assert f"{summary['kept']} of {summary['input']} kept" in markdown
    assert markdown.count("](data:image/png;base64,") == 5  # funnel, histograms, duplicates
    shard_runs = [t for t in task_runs if t.name.startswith("curate-curate_shard")]
    assert len(shard_runs) == len(list((root / "download").glob("0*.parquet")))
    assert all(t.state.is_completed() for t in shard_runs)
    manifest = read_manifest(storage, "curate")
    assert manifest is not None and manifest["counts"]["kept"] == summary["kept"]
    again = curate_flow(config=cfg.model_dump(mode="json"))
    assert again["skipped"] is True


def _null_every_caption(root: Path) -> None:
    for parquet in (root / "download").glob("0*.parquet"):
        table = pq.read_table(parquet)
        index = table.column_names.index("caption")
        pq.write_table(
            table.set_column(index, "caption", pa.nulls(table.num_rows, pa.string())), parquet
        )


def test_quality_gate_fails_the_flow_on_bad_input(
    prefect_harness, downloaded_web: DownloadedWeb, tmp_path: Path
):
    root = downloaded_web.root_with_download(tmp_path)
    _null_every_caption(root)
    cfg = downloaded_web.config(root)
    storage = _mark_download_done(root, cfg)
    state = curate_flow(config=cfg.model_dump(mode="json"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="curate quality gate failed"):
        state.result()
    assert read_manifest(storage, "curate") is None  # nothing downstream may start
    summary = json.loads((root / "curate" / "report" / "summary.json").read_text())
    assert summary["gate"]["success"] is False and summary["kept"] == 0
    failed = {e["expectation"] for e in summary["gate"]["expectations"] if not e["success"]}
    assert "expect_column_mean_to_be_between" in failed  # kept fraction 0 < the minimum
    artifacts, _ = run_records(state.state_details.flow_run_id)
    assert "curate-summary" in {a.key for a in artifacts}  # the failed run shows why

    warned = downloaded_web.config(root, gate="warn")
    assert curate_flow(config=warned.model_dump(mode="json"))["counts"]["kept"] == 0
