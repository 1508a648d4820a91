"""``kill -9`` in the middle of each stage, then a plain rerun: the rerun's outputs equal an
uninterrupted run's (same sample keys, same bytes, same counts).

One uninterrupted reference run goes stage by stage (``clipflow <stage> CONFIG``) at a fixed
storage root, copying the root aside before each stage and at the end. A test puts a copy
back at that same root (the config hash covers ``storage.root``, so outputs cannot move) and
runs the stage as a subprocess with ``tests/e2e/killer`` on ``PYTHONPATH``: right after the
stage publishes its N-th matching output file, the stage process gets SIGKILL, and so do the
processes between it and the one that published (img2dataset's worker; torchrun and its
rank). The test checks that it died by SIGKILL at that point and that the stage shows "not
run"; then it reruns the stage plainly and compares with the reference.

Two starting points per stage:
- its upstream only, as the reference run found it: the kill leaves part of the stage's
  output, which the rerun resumes from or replaces;
- the finished pipeline, rerun with ``--force``: the kill must also have retracted the
  stage's old manifest, and the stages after it must not show "done".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from demo.benchmark_sets import build_set
from flows.cli import main

pytestmark = pytest.mark.integration

KILLER = Path(__file__).resolve().parent / "killer"
CLIPFLOW = Path(sys.executable).with_name("clipflow")
TOTAL_STEPS = 8
CHECKPOINT_EVERY = 4


@dataclass(frozen=True)
class KillPoint:
    """Where a stage dies: right after the ``at``-th published file whose path matches
    ``pattern`` (relative to the root); ``outputs``: the folders the stage writes."""

    pattern: str
    at: int
    outputs: tuple[str, ...]


KILL_POINTS = {
    # 4 candidate files (100 rows each): dies after the first.
    "crawl": KillPoint(r"crawl/candidates-\d+\.parquet$", 1, ("crawl",)),
    # 4 img2dataset shards (100 candidates each): dies once the first is done.
    "download": KillPoint(r"download/\d+_stats\.json$", 1, ("download",)),
    # 4 feature parts, one per download shard: dies after the second.
    "curate": KillPoint(r"curate/_parts/\d+\.parquet$", 2, ("curate",)),
    # shard 0 and its progress record, then shard 1 without its record.
    "shard": KillPoint(r"shards/", 3, ("shards",)),
    # checkpoints at steps 4 and 8: dies once step 4 is latest.pt.
    "train": KillPoint(r"train/checkpoints/latest\.pt$", 1, ("train",)),
    # the first of the evaluation's files (results.json comes last).
    "evaluate": KillPoint(r"eval/", 1, ("eval",)),
}
STAGES = tuple(KILL_POINTS)
DEATH_WITHIN = 1.0
"""Seconds within which a killed stage's processes are all gone (the kernel's parent-death
signals, in steps down the tree; a Python handler can wait seconds on C code)."""
# Over a finished run, shard may keep every shard as it is: it dies between sizes.json and
# manifest.json, which it writes in any case.
FORCED_KILL_POINTS = {
    **KILL_POINTS,
    "shard": replace(KILL_POINTS["shard"], pattern=r"shards/sizes\.json$", at=1),
}


def stage_config(root: Path, web_url: str, eval_set: Path) -> dict[str, Any]:
    """The small demo web's pipeline, cut so every stage writes several files (timeouts
    short: the web's slow-drip endpoints would hold crawl and download for the whole of it)."""
    return {
        "storage": {"root": str(root)},
        "crawl": {"seeds": [web_url + "/"], "allow_private_networks": True, "max_pages": 300,
                  "rows_per_file": 100, "timeout": 3},
        "download": {"processes_count": 1, "thread_count": 16, "timeout": 3, "image_size": 28,
                     "number_sample_per_shard": 100},
        "curate": {"decontaminate": True, "gate": "fail"},
        "shard": {"samples_per_shard": 64},
        "train": {
            "model": "clipflow-tiny", "batch_size": 32, "samples": 32 * TOTAL_STEPS, "warmup": 2,
            "precision": "fp32", "nproc_per_node": 1, "workers": 0, "log_every_steps": 2,
            "checkpoint_every_steps": CHECKPOINT_EVERY, "keep_checkpoints": 2,
        },
        "evaluate": {
            "batch_size": 256,
            "datasets": [{"name": "fashion_mnist", "path": str(eval_set),
                          "task": "zeroshot_classification"}],
        },
    }  # fmt: skip


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run: ``finished`` holds its whole root, ``before[stage]`` the root
    as that stage found it; ``root`` is where every run happens."""

    root: Path
    config: Path
    before: dict[str, Path]
    finished: Path
    api_url: str

    def restore(self, copy: Path) -> None:
        """Make the root a copy of ``copy``."""
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.copytree(copy, self.root, symlinks=True)


@pytest.fixture(scope="module")
def reference(prefect_harness, demo_web, tmp_path_factory) -> Iterator[Reference]:
    """The uninterrupted run, one stage at a time, on the session's demo web; the killed
    subprocesses talk to the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    base = tmp_path_factory.mktemp("kill-resume")
    eval_set = base / "bench" / "fashion_mnist"
    build_set("fashion_mnist", eval_set, train_samples=100)
    root, config = base / "root", base / "config.yaml"
    config.write_text(yaml.safe_dump(stage_config(root, demo_web.url, eval_set)))
    root.mkdir()
    before = {}
    for stage in STAGES:
        before[stage] = base / "before" / stage
        shutil.copytree(root, before[stage], symlinks=True)
        assert main([stage, str(config)]) == 0, stage
    shutil.copytree(root, base / "finished", symlinks=True)
    yield Reference(root, config, before, base / "finished", str(PREFECT_API_URL.value()))


@dataclass(frozen=True)
class Killed:
    """How the killed run ended: exit status, the file it died after ("" if the kill did
    not fire), the tail of its output; when watched after the kill, the processes of its
    session still running at the end of the watch, how long the session took to empty, and
    the files under the root that changed once it had."""

    code: int
    fired: str
    tail: str
    survivors: list[str] = field(default_factory=list)
    ended_after: float = 0.0
    changed_after: list[str] = field(default_factory=list)


def run_killed(
    ref: Reference, stage: str, point: KillPoint, tmp_path: Path, *flags: str, watch: float = 0
) -> Killed:
    """``clipflow <stage> CONFIG [flags]``, set to die by SIGKILL at ``point``; then up to
    ``watch`` seconds for what it left running to end, before that is killed too, and (if it
    ended) 2 s more in which nothing may change under the root."""
    marker = tmp_path / "killed-at"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(KILLER), os.environ.get("PYTHONPATH")])),
        "PREFECT_API_URL": ref.api_url,
        "CLIPFLOW_KILL_MATCH": "^" + re.escape(str(ref.root)) + "/" + point.pattern,
        "CLIPFLOW_KILL_AT": str(point.at),
        "CLIPFLOW_KILL_MARKER": str(marker),
    }
    log = tmp_path / "killed.log"
    survivors: list[str] = []
    changed: list[str] = []
    ended_after = 0.0
    with log.open("wb") as out:
        # Output to a file, not a pipe: processes the kill orphans may hold a pipe open.
        proc = subprocess.Popen(
            [str(CLIPFLOW), stage, str(ref.config), *flags], env=env, cwd=tmp_path,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=600)
            if watch:
                died = time.monotonic()
                survivors = wait_for_session_to_end(proc.pid, watch)
                ended_after = time.monotonic() - died
                before = file_states(ref.root)
                time.sleep(0 if survivors else 2)
                after = file_states(ref.root)
                changed = sorted(
                    k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
                )
        finally:
            # What the dead stage left running in its session (img2dataset's processes).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    fired = marker.read_text().split(maxsplit=1)[1].strip() if marker.exists() else ""
    return Killed(
        proc.returncode, fired, log.read_text(errors="replace")[-3000:], survivors, ended_after,
        changed,
    )  # fmt: skip


def session_processes(sid: int) -> list[str]:
    """Command lines of the live (not zombie) processes in session ``sid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the command name: state, ppid, process group, session, ...
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # it ended while we looked
        if int(session) == sid and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace").strip())
    return found


def wait_for_session_to_end(sid: int, seconds: float) -> list[str]:
    """Wait up to ``seconds`` for session ``sid`` to have no live process; those left."""
    deadline = time.monotonic() + seconds
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime in ns) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (st.st_size, st.st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and (st := p.stat())
    }


# great-expectations names each validation's Data Docs page by the time it ran.
_RUN_TIME = re.compile(r"/\d{8}T\d{6}\.\d+Z/")
# A killed atomic write leaves its temporary file (``name.tmp-<hex>``); no reader lists
# those, so they are not outputs.
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]+$")


def output_files(root: Path, folders: tuple[str, ...]) -> set[str]:
    """Paths, relative to ``root``, of every file under the given folders but temporary
    ones (run times in them replaced by ``/TIME/``)."""
    return {
        _RUN_TIME.sub("/TIME/", str(p.relative_to(root)))
        for folder in folders
        for p in (root / folder).rglob("*")
        if p.is_file() and not _TEMPORARY.search(p.name)
    }


def manifest(root: Path, stage: str) -> dict[str, Any] | None:
    """``{root}/_manifests/{stage}.json``, the stage's "done" marker, if there is one."""
    path = root / "_manifests" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def status_lines(ref: Reference, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Each stage's line in ``clipflow status``."""
    capsys.readouterr()
    assert main(["status", str(ref.config)]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    return {line.split()[0]: line for line in lines if line.split()[:1] in ([s] for s in STAGES)}


def check_killed(
    ref: Reference, stage: str, point: KillPoint, killed: Killed, capsys: pytest.CaptureFixture[str]
) -> None:
    """It died by SIGKILL right after publishing a file at ``point``; no manifest says done."""
    assert killed.code == -signal.SIGKILL, (
        f"{stage} was not killed (exit {killed.code}):\n{killed.tail}"
    )
    assert re.search(point.pattern, killed.fired), (
        f"killed elsewhere than at {point}: {killed.fired!r}"
    )
    assert Path(killed.fired).is_file(), killed.fired
    assert manifest(ref.root, stage) is None, f"{stage}: a manifest survived the kill"
    assert re.fullmatch(rf"{stage}\s+not run", status_lines(ref, capsys)[stage])


def rerun_and_compare(ref: Reference, stage: str, point: KillPoint) -> None:
    """A plain ``clipflow <stage> CONFIG`` ends with the reference run's outputs."""
    killed_run = left_by_killed_run(ref.root, stage)
    assert main([stage, str(ref.config)]) == 0
    after, expected = manifest(ref.root, stage), manifest(ref.finished, stage)
    assert after is not None and expected is not None
    assert after["counts"] == expected["counts"]
    COMPARE[stage](ref.finished, ref.root, killed_run)
    extra = output_files(ref.root, point.outputs) - output_files(ref.finished, point.outputs)
    assert not extra, f"files an uninterrupted run does not leave: {sorted(extra)}"


@pytest.mark.parametrize("stage", STAGES)
def test_kill_mid_stage_then_rerun_matches_an_uninterrupted_run(
    reference: Reference, stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, point = reference, KILL_POINTS[stage]
    ref.restore(ref.before[stage])
    upstream = {s: manifest(ref.root, s) for s in STAGES[: STAGES.index(stage)]}

    killed = run_killed(ref, stage, point, tmp_path)
    check_killed(ref, stage, point, killed, capsys)
    assert {s: manifest(ref.root, s) for s in upstream} == upstream
    wanted, left = output_files(ref.finished, point.outputs), output_files(ref.root, point.outputs)
    assert 0 < len(left & wanted) < len(wanted), f"not killed mid-stage: {sorted(left)}"

    rerun_and_compare(ref, stage, point)


@pytest.mark.parametrize("stage", STAGES)
def test_kill_during_a_forced_rerun_retracts_the_stage(
    reference: Reference, stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, point = reference, FORCED_KILL_POINTS[stage]
    ref.restore(ref.finished)
    lines = status_lines(ref, capsys)
    assert all(re.match(rf"{s}\s+done\b", lines[s]) for s in STAGES), lines

    killed = run_killed(ref, stage, point, tmp_path, "--force")
    check_killed(ref, stage, point, killed, capsys)
    lines = status_lines(ref, capsys)
    downstream = STAGES[STAGES.index(stage) + 1 :]
    assert not [s for s in downstream if re.match(rf"{s}\s+done\b", lines[s])], lines

    rerun_and_compare(ref, stage, point)


def test_a_killed_download_leaves_nothing_running_or_writing(
    reference: Reference, tmp_path: Path
) -> None:
    """``kill -9`` of the download stage and img2dataset's process, as its worker starts the
    second shard: nothing of the stage may live on, let alone write into the root. (A kill
    runs down a process tree in steps, not at once: what the dying worker writes in those
    milliseconds is a shard without its stats, which a rerun redoes. A worker that lives on
    finishes its shard, racing the rerun: that is what must not happen.)"""
    ref = reference
    ref.restore(ref.before["download"])
    point = KillPoint(r"download/_tmp/\d+\.feather \(result received\)$", 1, ("download",))
    killed = run_killed(ref, "download", point, tmp_path, watch=10)
    assert killed.code == -signal.SIGKILL, f"download was not killed:\n{killed.tail}"
    assert re.search(point.pattern, killed.fired), killed.fired
    assert not killed.survivors, f"still running 10 s after the stage died: {killed.survivors}"
    assert killed.ended_after < DEATH_WITHIN, (
        f"the stage's processes outlived it by {killed.ended_after:.2f} s"
    )
    assert not killed.changed_after, f"written after they died: {killed.changed_after}"


def left_by_killed_run(root: Path, stage: str) -> dict[str, Any]:
    """What a resuming rerun must keep from the killed run: for train, the inode of the
    checkpoint it died after (a restart would rewrite it)."""
    if stage != "train":
        return {}
    checkpoint = root / "train" / "checkpoints" / f"step_{CHECKPOINT_EVERY}.pt"
    return {"inode": checkpoint.stat().st_ino}


# ---- per-stage comparisons: reference root ``a``, killed-and-rerun root ``b`` ----


def _parquets(folder: Path, pattern: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob(pattern))], ignore_index=True)


def compare_crawl(a: Path, b: Path, _: dict[str, Any]) -> None:
    """Candidates as a set of (url, caption, source), each once: the crawl's order varies,
    and so does which page a pair found on two pages is credited to."""
    cols = ["url", "caption", "source"]

    def rows(root: Path) -> list[tuple[str, ...]]:
        frame = _parquets(root / "crawl", "candidates-*.parquet")[cols]
        return list(frame.itertuples(index=False, name=None))

    assert len(set(rows(b))) == len(rows(b)) == len(rows(a))
    assert set(rows(b)) == set(rows(a))
    errors = ["url", "reason"]
    assert set(
        pd.read_parquet(b / "crawl" / "errors.parquet")[errors].itertuples(index=False)
    ) == set(pd.read_parquet(a / "crawl" / "errors.parquet")[errors].itertuples(index=False))


def _tar_members(path: Path) -> dict[str, bytes]:
    """Member name -> bytes of every file in a tar."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _download_samples(root: Path) -> dict[str, tuple[str, str, str]]:
    """key -> (url, caption, sha256 of the image bytes) over every download tar."""
    samples = {}
    for tar in sorted((root / "download").glob("*.tar")):
        members = _tar_members(tar)
        for name, data in members.items():
            key, ext = name.rsplit(".", 1)
            if ext in ("jpg", "jpeg", "png", "webp"):
                meta = json.loads(members[f"{key}.json"])
                caption = members[f"{key}.txt"].decode()
                samples[key] = (meta["url"], caption, hashlib.sha256(data).hexdigest())
    return samples


def compare_download(a: Path, b: Path, _: dict[str, Any]) -> None:
    """Same keys with the same URL, caption and image bytes; same status for every row."""
    assert _download_samples(b) == _download_samples(a)
    cols = ["key", "url", "status"]
    status_a = _parquets(a / "download", "[0-9]*.parquet")[cols].sort_values("key")
    status_b = _parquets(b / "download", "[0-9]*.parquet")[cols].sort_values("key")
    pd.testing.assert_frame_equal(status_b.reset_index(drop=True), status_a.reset_index(drop=True))


def compare_curate(a: Path, b: Path, _: dict[str, Any]) -> None:
    """samples.parquet row for row (keys, hashes, scores, keep and reasons) and the report's
    summary.json."""
    samples_a = pd.read_parquet(a / "curate" / "samples.parquet").sort_values("key")
    samples_b = pd.read_parquet(b / "curate" / "samples.parquet").sort_values("key")
    pd.testing.assert_frame_equal(
        samples_b.reset_index(drop=True), samples_a.reset_index(drop=True)
    )
    summary = [(r / "curate" / "report" / "summary.json").read_bytes() for r in (a, b)]
    assert summary[1] == summary[0]


def compare_shard(a: Path, b: Path, _: dict[str, Any]) -> None:
    """Every shard member's bytes, per shard; sizes.json and the shard list of manifest.json."""

    def members(root: Path) -> dict[str, dict[str, str]]:
        return {
            tar.name: {n: hashlib.sha256(d).hexdigest() for n, d in _tar_members(tar).items()}
            for tar in sorted((root / "shards").glob("*.tar"))
        }

    assert members(b) == members(a)
    assert (b / "shards" / "sizes.json").read_bytes() == (a / "shards" / "sizes.json").read_bytes()
    shards = [json.loads((r / "shards" / "manifest.json").read_text())["shards"] for r in (a, b)]
    assert shards[1] == shards[0]


def compare_train(a: Path, b: Path, killed: dict[str, Any]) -> None:
    """It resumed from the killed run's checkpoint (not a restart) and ended where the
    reference did: same step, samples seen, logged steps and losses, and weights."""
    checkpoint = b / "train" / "checkpoints" / f"step_{CHECKPOINT_EVERY}.pt"
    assert checkpoint.stat().st_ino == killed["inode"], "the rerun restarted instead of resuming"
    summary = [json.loads((r / "train" / "summary.json").read_text()) for r in (a, b)]
    for key in ("step", "samples_seen", "skipped_samples"):
        assert summary[1][key] == summary[0][key], key
    assert summary[1]["step"] == TOTAL_STEPS

    def logged(root: Path) -> list[tuple[int, float]]:
        lines = (root / "train" / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines)]

    assert logged(b) == logged(a)
    weights = [
        torch.load(io.BytesIO((r / "train" / "checkpoints" / "latest.pt").read_bytes()),
                   map_location="cpu", weights_only=False)["state_dict"]
        for r in (a, b)
    ]  # fmt: skip
    assert weights[1].keys() == weights[0].keys()
    differ = [k for k in weights[0] if not torch.equal(weights[1][k], weights[0][k])]
    assert not differ, f"resumed weights differ from an uninterrupted run's: {differ[:5]}"


def compare_evaluate(a: Path, b: Path, _: dict[str, Any]) -> None:
    """results.json and each dataset's metrics and per-class table."""
    for name in ("results.json", "fashion_mnist/metrics.json", "fashion_mnist/per_class.csv",
                 "fashion_mnist/confusion_matrix.csv", "results.md"):  # fmt: skip
        assert (b / "eval" / name).read_bytes() == (a / "eval" / name).read_bytes(), name


COMPARE = {
    "crawl": compare_crawl,
    "download": compare_download,
    "curate": compare_curate,
    "shard": compare_shard,
    "train": compare_train,
    "evaluate": compare_evaluate,
}
