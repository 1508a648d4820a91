"""Reading the CLIP_benchmark WDS layout: every sample accounted for, local or S3, and each bad
input a clear error naming the file."""

from __future__ import annotations

import shutil
import tarfile

import numpy as np
import pytest

from demo import benchmark_sets
from model import image_transform
from model.eval_data import EvalDataError, WdsEvalDataset, make_loader, read_dataset_info

TRANSFORM = image_transform(28, is_train=False)


def _read(root, split="test", needs_templates=True, options=None):
    info = read_dataset_info(str(root), needs_templates, options)
    dataset = WdsEvalDataset(info, split, TRANSFORM, options)
    return [label for _, labels in make_loader(dataset, batch_size=64) for label in labels.tolist()]


def _copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / "set")


def _write_tar(path, members: dict[str, bytes]) -> None:
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_reads_every_sample_of_every_shard(fashion_small):
    from demo import offline_data

    _, expected = offline_data.fashion_mnist("test")
    assert _read(fashion_small) == expected[:240].tolist()  # 3 shards, in order


def test_reads_shards_from_a_glob_without_nshards(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "test" / "nshards.txt").unlink()
    assert len(_read(root)) == 240


def test_multiple_workers_read_disjoint_shards(fashion_small):
    info = read_dataset_info(str(fashion_small), needs_templates=True)
    loader = make_loader(WdsEvalDataset(info, "test", TRANSFORM), batch_size=50, workers=2)
    assert sorted(label for _, y in loader for label in y.tolist()) == sorted(_read(fashion_small))


def test_reads_from_s3(fashion_small, s3_server, s3_bucket):
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(fashion_small), f"{s3_bucket}/sets/fashion", recursive=True)
    assert _read(f"s3://{s3_bucket}/sets/fashion", options=options) == _read(fashion_small)
    with pytest.raises(EvalDataError, match=f"s3://{s3_bucket}/sets/nothing"):
        read_dataset_info(f"s3://{s3_bucket}/sets/nothing", storage_options=options)


def test_missing_classnames_names_the_file(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "classnames.txt").unlink()
    with pytest.raises(EvalDataError, match=f"{root}/classnames.txt: file not found"):
        _read(root)


def test_missing_templates_names_the_file(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "zeroshot_classification_templates.txt").unlink()
    with pytest.raises(
        EvalDataError, match="zeroshot_classification_templates.txt: file not found"
    ):
        _read(root)
    assert len(_read(root, needs_templates=False)) == 240  # a linear probe needs no prompts


def test_blank_class_name_names_the_file_and_line(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "classnames.txt").write_text("t-shirt\n\ndress\n")
    with pytest.raises(EvalDataError, match=r"classnames.txt: blank line\(s\) \[2\]"):
        _read(root)


def test_label_out_of_range_names_the_tar_and_sample(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "classnames.txt").write_text("t-shirt\npair of trousers\n")
    with pytest.raises(EvalDataError, match=r"test/0.tar:000000.cls: label \d out of range") as e:
        _read(root)
    assert "classnames.txt has 2 classes" in str(e.value)


def test_corrupt_tar_names_the_file(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "test" / "1.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(EvalDataError, match=r"test/1.tar: corrupt or unreadable tar"):
        _read(root)


def test_truncated_tar_names_the_file(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    data = (root / "test" / "2.tar").read_bytes()
    (root / "test" / "2.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(EvalDataError, match=r"test/2.tar: corrupt or unreadable tar"):
        _read(root)


def test_undecodable_image_names_the_member(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "test" / "nshards.txt").write_text("1\n")
    _write_tar(root / "test" / "0.tar", {"a.png": b"\x89PNG garbage", "a.cls": b"0"})
    with pytest.raises(EvalDataError, match=r"test/0.tar:a.png: not a readable image"):
        _read(root)


def test_sample_without_label_names_the_sample(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "test" / "nshards.txt").write_text("1\n")
    png = benchmark_sets.png_bytes(np.zeros((28, 28), np.uint8))
    _write_tar(root / "test" / "0.tar", {"a.png": png, "a.cls": b"0", "b.png": png})
    with pytest.raises(EvalDataError, match=r"test/0.tar:b: no .cls label member"):
        _read(root)


@pytest.mark.parametrize("how", ["no_tars", "nshards_zero", "tar_without_samples"])
def test_empty_split_names_the_folder(tmp_path, fashion_small, how):
    root = _copy(fashion_small, tmp_path)
    split = root / "test"
    for tar in split.glob("*.tar"):
        tar.unlink()
    (split / "nshards.txt").unlink()
    if how == "nshards_zero":
        (split / "nshards.txt").write_text("0\n")
    if how == "tar_without_samples":
        _write_tar(split / "0.tar", {})
        with pytest.raises(EvalDataError, match=f"{split}/0.tar: empty shard"):
            _read(root)
        return
    with pytest.raises(EvalDataError, match=f"{split}: empty split"):
        _read(root)


def test_missing_shard_listed_in_nshards_is_named(tmp_path, fashion_small):
    root = _copy(fashion_small, tmp_path)
    (root / "test" / "1.tar").unlink()
    with pytest.raises(EvalDataError, match=r"nshards.txt says 3 shards; missing: .*test/1.tar"):
        _read(root)
