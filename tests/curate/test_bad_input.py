"""Bad input: null and invalid-UTF-8 captions, zero-size and undecodable images, a truncated
shard tar, repeated keys, unreadable shard files. Each gets a named reason or a clear error,
and every input row is still accounted for."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.storage import Storage
from tasks.curate.stage import curate
from tests.curate.conftest import DownloadedWeb


def _success_keys(parquet: Path) -> list[str]:
    table = pq.read_table(parquet).to_pandas()
    return table.loc[table["status"] == "success", "key"].tolist()


def _rewrite_members(tar_path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite a shard tar with some ``{key}.jpg`` members' bytes replaced."""
    members = []
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            key, ext = m.name.rsplit(".", 1)
            members.append((m.name, replace[key] if ext == "jpg" and key in replace else data))
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _patch_captions(parquet: Path, captions: dict[str, bytes | None]) -> None:
    """Replace some captions with raw bytes (possibly invalid UTF-8) or null."""
    table = pq.read_table(parquet)
    keys = table.column("key").to_pylist()
    raw = [c.encode() if c is not None else None for c in table.column("caption").to_pylist()]
    patched = [captions.get(k, r) if k in captions else r for k, r in zip(keys, raw, strict=True)]
    index = table.column_names.index("caption")
    table = table.set_column(index, "caption", pa.array(patched, pa.binary()))
    pq.write_table(table, parquet)


@pytest.fixture(scope="module")
def bad_run(downloaded_web: DownloadedWeb, tmp_path_factory: pytest.TempPathFactory):
    root = downloaded_web.root_with_download(tmp_path_factory.mktemp("bad"))
    download = root / "download"
    first, second = sorted(download.glob("0*.parquet"))[:2]
    keys0 = _success_keys(first)
    _rewrite_members(first.with_suffix(".tar"), {keys0[0]: b"", keys0[1]: b"\xff\xd8not a jpeg"})
    _patch_captions(
        first, {keys0[2]: b"caf\xe9 au lait on a table, \xff\xfe bytes", keys0[3]: None}
    )
    tar1 = second.with_suffix(".tar")
    with tarfile.open(tar1) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    cut = offsets[len(offsets) // 2] + 700  # mid-member: the tail of the shard is lost
    tar1.write_bytes(tar1.read_bytes()[:cut])
    for suffix in (".parquet", ".tar"):  # a re-run wrote the same keys under a new shard
        shutil.copy(first.with_suffix(suffix), download / f"00099{suffix}")
    cfg = downloaded_web.config(root, gate="warn")
    result = curate(cfg, Storage(cfg.storage))
    samples = pd.read_parquet(root / "curate" / "samples.parquet")
    summary = json.loads((root / "curate" / "report" / "summary.json").read_text())
    return result, samples, summary, keys0, _success_keys(second)


def _reasons(samples: pd.DataFrame, key: str, shard: str = "00000.tar") -> list[str]:
    row = samples[(samples["key"] == key) & (samples["download_shard"] == shard)]
    assert len(row) == 1, (key, shard)
    return list(row.iloc[0]["reasons"])


def test_bad_images_and_captions_get_named_reasons(bad_run):
    _, samples, _, keys0, _ = bad_run
    assert _reasons(samples, keys0[0])[0] == "image_empty"
    assert _reasons(samples, keys0[1])[0] == "image_undecodable"
    assert "caption_invalid_utf8" in _reasons(samples, keys0[2])
    assert _reasons(samples, keys0[3])[0] == "caption_missing"
    row = samples[(samples["key"] == keys0[2]) & (samples["download_shard"] == "00000.tar")]
    assert "\ufffd" in row.iloc[0]["caption"]  # kept readable, marked, never silently fixed


def test_truncated_tar_loses_only_its_tail(bad_run):
    _, samples, summary, _, keys1 = bad_run
    shard = samples[samples["download_shard"] == "00001.tar"]
    truncated = shard[shard["reasons"].map(lambda r: "shard_truncated" in r)]
    assert 0 < len(truncated) < len(keys1)
    readable = shard[shard["key"].isin(keys1) & ~shard["key"].isin(truncated["key"])]
    assert (readable["image_state"] == "ok").all()
    assert summary["truncated_shards"] == 1


def test_repeated_keys_are_dropped_and_name_their_owner(bad_run):
    _, samples, _, _, _ = bad_run
    copies = samples[samples["download_shard"] == "00099.tar"]
    assert len(copies) > 0
    assert copies["reasons"].map(lambda r: r[0] == "duplicate_key").all()
    assert (copies["duplicate_of"] == copies["key"]).all()
    assert samples.loc[samples["keep"], "key"].is_unique


def test_accounting_holds_on_bad_input(bad_run):
    result, samples, summary, _, _ = bad_run
    assert summary["kept"] + sum(summary["dropped_by_reason"].values()) == summary["input"]
    assert summary["input"] == len(samples) == result.counts["input"]
    for reason in ("image_empty", "image_undecodable", "shard_truncated", "duplicate_key"):
        assert summary["dropped_by_reason"][reason] > 0, reason


def test_unreadable_shard_parquet_is_a_clear_error(downloaded_web, tmp_path):
    root = downloaded_web.root_with_download(tmp_path)
    (root / "download" / "00000.parquet").write_bytes(b"PAR1 this is not parquet")
    cfg = downloaded_web.config(root)
    with pytest.raises(ValueError, match=r"00000\.parquet: unreadable download shard parquet"):
        curate(cfg, Storage(cfg.storage))


def test_a_shard_parquet_without_the_original_sizes_is_a_clear_error(downloaded_web, tmp_path):
    """Without original_width/height the size and aspect rules could not judge any row (they
    would keep every one), so such a parquet is refused, named, before any work is done."""
    root = downloaded_web.root_with_download(tmp_path)
    parquet = root / "download" / "00000.parquet"
    pq.write_table(
        pq.read_table(parquet).drop_columns(["original_width", "original_height"]), parquet
    )
    cfg = downloaded_web.config(root)
    with pytest.raises(ValueError, match=r"00000\.parquet: download shard parquet lacks columns "
                       r"\['original_width', 'original_height'\]"):  # fmt: skip
        curate(cfg, Storage(cfg.storage))


def test_missing_download_is_a_clear_error(downloaded_web, tmp_path):
    cfg = downloaded_web.config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no download shards"):
        curate(cfg, Storage(cfg.storage))


def test_an_io_error_while_reading_a_tar_raises_so_the_task_retries(tmp_path, monkeypatch):
    """Only a tar whose bytes end early is a data drop (``shard_truncated``). A transient
    I/O error (a reset S3 connection) must raise, so Prefect retries the task, instead of
    dropping the shard's samples for good."""
    from PIL import Image

    from tasks.core.config import StorageConfig
    from tasks.curate.features import read_tar_images

    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(4):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{i:09d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    storage = Storage(StorageConfig(root=str(tmp_path)))
    assert len(read_tar_images(storage, str(tar_path)).infos) == 4

    class Flaky(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > 2048:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(n)

    real_open = storage.open
    monkeypatch.setattr(storage, "open", lambda uri, mode="rb": Flaky(tar_path.read_bytes()))
    with pytest.raises(ConnectionResetError):
        read_tar_images(storage, str(tar_path))
    monkeypatch.setattr(storage, "open", real_open)

    tar_path.write_bytes(tar_path.read_bytes()[:3000])  # really cut short
    found = read_tar_images(storage, str(tar_path))
    assert found.problem == "truncated" and 0 < len(found.infos) < 4
