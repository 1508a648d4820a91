"""Stage manifests: written last, skip when unchanged, rerun when config, input or forced."""

from __future__ import annotations

import pytest

from tasks.core.config import PipelineConfig
from tasks.core.lineage import StaleUpstream, stage_status, upstream_digests
from tasks.core.manifest import StageResult, read_manifest
from tasks.core.runner import run_stage
from tasks.core.storage import Storage
from tests.finished_stages import balanced


def cfg_at(root, **sections) -> PipelineConfig:
    return PipelineConfig.model_validate({"storage": {"root": str(root)}, **sections})


def counting_body(calls: list[str], name: str):
    def body(storage: Storage) -> StageResult:
        calls.append(name)
        storage.write_bytes(storage.uri(name, "out.txt"), b"x")
        counts = balanced(name, {"n": len(calls)})
        return StageResult(counts=counts, outputs={"out": storage.uri(name)})

    return body


def test_skip_rerun_and_force(tmp_root):
    calls: list[str] = []
    cfg = cfg_at(tmp_root)
    first = run_stage("crawl", cfg, counting_body(calls, "crawl"))
    assert not first["skipped"] and calls == ["crawl"]
    assert read_manifest(Storage(cfg.storage), "crawl")["counts"]["n"] == 1
    assert run_stage("crawl", cfg, counting_body(calls, "crawl"))["skipped"]
    assert calls == ["crawl"]
    run_stage("crawl", cfg, counting_body(calls, "crawl"), force=True)
    assert calls == ["crawl", "crawl"]
    changed = cfg_at(tmp_root, crawl={"max_pages": 7})
    assert not run_stage("crawl", changed, counting_body(calls, "crawl"))["skipped"]


def test_upstream_change_invalidates_downstream(tmp_root):
    calls: list[str] = []
    cfg = cfg_at(tmp_root)
    run_stage("crawl", cfg, counting_body(calls, "crawl"))
    run_stage("download", cfg, counting_body(calls, "download"))
    storage = Storage(cfg.storage)
    before = upstream_digests(storage, cfg, "download")
    assert run_stage("download", cfg, counting_body(calls, "download"))["skipped"]
    run_stage("crawl", cfg, counting_body(calls, "crawl"), force=True)  # new counts upstream
    assert upstream_digests(storage, cfg, "download") != before
    assert stage_status(storage, cfg, "download").reason == "because crawl was rerun since"
    assert not run_stage("download", cfg, counting_body(calls, "download"))["skipped"]


def test_stage_refuses_to_run_without_its_upstream(tmp_root):
    with pytest.raises(StaleUpstream, match="upstream stage 'crawl' has not finished"):
        run_stage("download", cfg_at(tmp_root), counting_body([], "download"))


def test_failed_stage_writes_no_manifest(tmp_root):
    cfg = cfg_at(tmp_root)

    def boom(storage: Storage) -> StageResult:
        raise ValueError("broken input x.parquet")

    with pytest.raises(ValueError, match="x.parquet"):
        run_stage("crawl", cfg, boom)
    assert read_manifest(Storage(cfg.storage), "crawl") is None


def test_evaluating_a_given_checkpoint_needs_no_train_stage(tmp_root):
    cfg = cfg_at(tmp_root, evaluate={"checkpoint": str(tmp_root / "any.pt")})
    assert not run_stage("evaluate", cfg, counting_body([], "evaluate"))["skipped"]
    with pytest.raises(StaleUpstream, match="upstream stage 'shard'"):
        run_stage("train", cfg, counting_body([], "train"))


def test_a_rerun_sweeps_what_a_killed_run_left_half_written(tmp_root):
    """Temporary files (``model.atomic.TEMP_MARK``) in the stage's output folders are a
    killed run's; the rerun removes them before its body runs, and nothing else."""
    cfg = cfg_at(tmp_root)
    left = [
        tmp_root / "crawl" / "candidates-00000.parquet.tmp-1f2e",
        tmp_root / "crawl" / "a" / "b.tmp-9",
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    kept = tmp_root / "crawl" / "candidates-00001.parquet"
    kept.write_bytes(b"whole")
    elsewhere = tmp_root / "download" / "x.tmp-3"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"not crawl's")
    seen: list[bool] = []

    def body(storage: Storage) -> StageResult:
        seen.append(any(p.exists() for p in left))
        return StageResult(counts=balanced("crawl", {"n": 1}))

    run_stage("crawl", cfg, body)
    assert seen == [False] and kept.exists() and elsewhere.exists()


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        ({"candidates": 13, "successes": 3, "failed_http_404": 4, "failed_ssrf_refused": 3},
         "candidates 13 != successes 3 \\+ failed_http_404 4 \\+ failed_ssrf_refused 3 = 10"),
        ({"successes": 3}, "counts lack \\['candidates'\\]"),
    ],
)  # fmt: skip
def test_counts_that_do_not_add_up_fail_the_stage_before_its_manifest(tmp_root, counts, problem):
    """Each stage declares its accounting identity (download: candidates == successes +
    failed_*); the runner refuses to write a manifest for counts that lose samples."""
    from tasks.core.stage import AccountingError
    from tests.finished_stages import record_finished

    cfg = cfg_at(tmp_root)
    record_finished(cfg, crawl={})
    with pytest.raises(AccountingError, match=problem):
        run_stage("download", cfg, lambda storage: StageResult(counts=counts))
    assert read_manifest(Storage(cfg.storage), "download") is None
    balanced = {"candidates": 10, "successes": 3, "failed_http_404": 4, "failed_ssrf_refused": 3}
    run_stage("download", cfg, lambda storage: StageResult(counts=balanced))
    assert read_manifest(Storage(cfg.storage), "download")["counts"] == balanced


def test_secrets_in_urls_never_reach_the_manifest(tmp_root):
    """A presigned checkpoint URL (query signature) and userinfo are redacted in what the
    manifest records: its config, outputs and extra (the artifacts are built from it)."""
    secret_url = "https://alice:hunter2@models.example/ckpt.pt?X-Amz-Signature=deadbeef&x=1"
    cfg = cfg_at(tmp_root, evaluate={"checkpoint": secret_url})
    run_stage(
        "evaluate", cfg,
        lambda storage: StageResult(outputs={"from": secret_url}, extra={"checkpoint": secret_url}),
    )  # fmt: skip
    text = Storage(cfg.storage).read_bytes(Storage(cfg.storage).uri("_manifests", "evaluate.json"))
    assert b"hunter2" not in text and b"deadbeef" not in text and b"alice" not in text
    manifest = read_manifest(Storage(cfg.storage), "evaluate")
    assert manifest["extra"]["checkpoint"] == "https://***@models.example/ckpt.pt?***"
    # The hash is of the real value: another signature is another config.
    assert stage_status(Storage(cfg.storage), cfg, "evaluate").done
