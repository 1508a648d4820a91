"""The one tar module (``model.tario``): what it writes other readers read, what it reads
matches ``tarfile``, and a tar cut anywhere before its end is an error, never a short read."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from model.tario import (
    IndexedTar,
    SampleWriter,
    TarReadError,
    UnsafeTarMember,
    iter_members,
    iter_samples,
)

SAMPLES = {f"{i:04d}": {"jpg": bytes([i]) * (300 + 211 * i), "txt": f"caption {i}".encode()}
           for i in range(6)}  # fmt: skip


def written(samples: dict[str, dict[str, bytes]] = SAMPLES) -> bytes:
    stream = io.BytesIO()
    with SampleWriter(stream) as tar:
        for key, members in samples.items():
            tar.write(key, members)
    assert tar.sha256 == hashlib.sha256(stream.getvalue()).hexdigest()
    assert tar.bytes == len(stream.getvalue())
    return stream.getvalue()


def test_written_tars_are_reproducible_and_read_by_tarfile_and_webdataset(tmp_path: Path) -> None:
    data = written()
    assert written() == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert {(m.mtime, m.mode, m.uname) for m in members} == {(0, 0o644, "")}
        assert {m.name: tar.extractfile(m).read() for m in members} == {  # type: ignore[union-attr]
            f"{k}.{e}": v for k, s in SAMPLES.items() for e, v in s.items()
        }
    (tmp_path / "0.tar").write_bytes(data)
    read = {
        s["__key__"]: s["txt"] for s in wds.WebDataset(str(tmp_path / "0.tar"), shardshuffle=False)
    }
    assert read == {k: s["txt"] for k, s in SAMPLES.items()}


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile_for_each_format(fmt: int) -> None:
    stream = io.BytesIO()
    names = ["a/" + "long" * 40 + ".jpg", "caf\u00e9.txt", "dir/b.png"]
    if fmt == tarfile.USTAR_FORMAT:
        names[0], names[1] = "p" * 90 + "/" + "x" * 60 + ".jpg", "plain.txt"
    with tarfile.open(fileobj=stream, mode="w", format=fmt) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = i + 1, 1.5  # a fractional mtime: a pax header in pax format
            tar.addfile(info, io.BytesIO(b"x" * (i + 1)))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    found = list(iter_members(io.BytesIO(stream.getvalue()), "f.tar"))
    assert found == [(name, b"x" * (i + 1)) for i, name in enumerate(names)]


def test_a_tar_cut_anywhere_before_its_end_is_refused() -> None:
    data = written()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # where the end-of-archive block starts
    for cut in range(0, end, 97):
        with pytest.raises(TarReadError, match=r"t\.tar is truncated"):
            list(iter_samples(io.BytesIO(data[:cut]), "t.tar"))
    assert len(list(iter_samples(io.BytesIO(data[: end + 512]), "t.tar"))) == len(SAMPLES)


def test_a_corrupt_header_or_a_repeated_member_is_named() -> None:
    data = bytearray(written())
    second_header = 512 + len(SAMPLES["0000"]["jpg"]) // 512 * 512 + 512
    data[second_header + 10] ^= 0xFF
    with pytest.raises(TarReadError, match=r"t\.tar is corrupt after member '0000.jpg'"):
        list(iter_samples(io.BytesIO(bytes(data)), "t.tar"))
    twice = io.BytesIO()
    with tarfile.open(fileobj=twice, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("k.jpg")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(TarReadError, match="d.tar is corrupt: k.jpg: duplicate"):
        list(iter_samples(io.BytesIO(twice.getvalue()), "d.tar"))


def test_indexed_tar_reads_by_offset_and_refuses_unsafe_members(tmp_path: Path) -> None:
    path = tmp_path / "in.tar"
    path.write_bytes(written())
    with IndexedTar(str(path), "in.tar") as tar:
        assert list(tar.index) == list(SAMPLES)
        assert tar.read("0003", "jpg") == SAMPLES["0003"]["jpg"]
    with tarfile.open(path, "a") as tar:
        link = tarfile.TarInfo("0009.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeTarMember, match="'0009.jpg': not a regular file"):
        IndexedTar(str(path), "in.tar")
