"""The one atomic writer (``model.atomic``) on local disk and on a real S3 API (moto_server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.atomic import TEMP_MARK, AtomicWriter, atomic_folder, write_atomic
from model.s3 import make_client


def test_local_writes_land_whole_or_not_at_all(tmp_path: Path) -> None:
    writer, target = AtomicWriter(), str(tmp_path / "a" / "b.bin")
    writer.write_bytes(b"old", target)
    with pytest.raises(RuntimeError, match="writer died"), writer.open(target) as (fh, _):
        fh.write(b"half of the new")
        raise RuntimeError("writer died")
    assert Path(target).read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]  # no temporary left
    source = tmp_path / "local.bin"
    source.write_bytes(b"new" * 1000)
    writer.write_file(str(source), target)
    writer.copy(target, str(tmp_path / "a" / "latest.bin"))
    assert (tmp_path / "a" / "latest.bin").read_bytes() == b"new" * 1000
    assert (tmp_path / "a" / "latest.bin").stat().st_ino == Path(target).stat().st_ino


def test_other_schemes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only local paths and s3:// URIs"):
        AtomicWriter().write_bytes(b"x", "gs://bucket/x")


def test_s3_writes_are_checksummed_and_copied_on_the_server(s3_server, s3_bucket: str) -> None:
    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    data = b"checkpoint" * 1000
    write_atomic(data, f"s3://{s3_bucket}/run/step_1.pt", options)
    AtomicWriter.for_options(options).copy(
        f"s3://{s3_bucket}/run/step_1.pt", f"s3://{s3_bucket}/run/latest.pt"
    )
    client = make_client(s3_server.endpoint_url)
    head = client.head_object(Bucket=s3_bucket, Key="run/step_1.pt", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"]  # the PUT carried a SHA-256 that the server checked
    assert client.get_object(Bucket=s3_bucket, Key="run/latest.pt")["Body"].read() == data


def test_a_folder_appears_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "set"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("second, never finished")
        raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "first"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]
