"""WAT/WARC files as mapped tasks: each file is read by its own Prefect task, on the task
runner ``execution`` names, and the candidates come out exactly as when every file is read
into one writer in order (the same rows, duplicates, truncations, file numbering, errors)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from warcio.warcwriter import WARCWriter

from flows.crawl import crawl_flow
from tasks.core.config import ExecutionConfig, PipelineConfig
from tasks.core.storage import Storage
from tasks.crawl.candidates import CandidateWriter
from tasks.crawl.stage import read_archive
from tests.crawl.test_wat import DATE, wat_json
from tests.fixtures_prefect import run_records

FILES, PAGES = 5, 120


def write_archive(path: Path, index: int) -> None:
    """PAGES pages of 3 images; each file repeats pairs of the file before it (duplicates
    across files), some captions are over the length cap, and some records are broken."""
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for page in range(PAGES):
            uri = f"http://shop{index}.example/p{page}.html"
            links = [
                {"path": "IMG@/src", "url": f"http://cdn.example/{(index + k) % FILES}/{page}.jpg",
                 "alt": f"item {page} of shop {(index + k) % FILES}" + " long" * (40 * k)}
                for k in range(3)
            ]  # fmt: skip
            body = b"{broken" if page % 37 == 5 else wat_json(uri, links)
            record = writer.create_warc_record(
                uri, "metadata", payload=io.BytesIO(body), warc_content_type="application/json",
                warc_headers_dict={"WARC-Date": DATE},
            )  # fmt: skip
            writer.write_record(record)


def config(root: Path, files: list[Path], execution: ExecutionConfig) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "storage": {"root": str(root)},
        "crawl": {"wat_files": [str(f) for f in files], "rows_per_file": 250,
                  "max_caption_chars": 100},
        "execution": execution.model_dump(),
    })  # fmt: skip


def read_in_one_writer(cfg: PipelineConfig) -> None:
    """The reference: every file read into one CandidateWriter, in order, in this process."""
    with CandidateWriter(Storage(cfg.storage), 250, 100) as out:
        for uri in cfg.crawl.wat_files:
            read_archive(uri, None, cfg.crawl, sink=out)


def outputs(root: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in sorted((root / "crawl").glob("*.parquet"))}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("archives")
    files = [folder / f"CC-{i}.warc.wat.gz" for i in range(FILES)]
    for i, path in enumerate(files):
        write_archive(path, i)
    return files


@pytest.mark.parametrize("runner", ["local", "dask"])
def test_each_archive_is_a_task_and_the_candidates_are_those_of_one_writer(
    prefect_harness, archives: list[Path], tmp_path: Path, runner: str
) -> None:
    reference = tmp_path / "reference"
    read_in_one_writer(config(reference, archives, ExecutionConfig()))
    expected = outputs(reference)
    assert len([n for n in expected if n.startswith("candidates-")]) > 2  # several files
    truth = pd.concat([f for n, f in expected.items() if n.startswith("candidates-")])
    assert truth["caption"].str.len().max() == 100  # some were truncated

    cfg = config(tmp_path / "mapped", archives, ExecutionConfig(runner=runner))
    state = crawl_flow(config=cfg, return_state=True)
    manifest = state.result()
    assert manifest["counts"]["archive_wat_records_failed"] > 0
    assert manifest["counts"]["duplicates_dropped"] > 0
    got = outputs(tmp_path / "mapped")
    assert list(got) == list(expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(got[name], frame, obj=name)
    assert not (tmp_path / "mapped" / "crawl" / "_parts").exists()  # spools removed
    _, task_runs = run_records(state.state_details.flow_run_id)
    read = [t for t in task_runs if t.name.startswith("crawl-read_archive_part")]
    assert len(read) == FILES and all(t.state.is_completed() for t in read)
