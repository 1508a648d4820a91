"""Config: unknown keys and bad values fail up front, naming the field."""

from __future__ import annotations

import pytest
import yaml

from tasks.core.config import ConfigError, PipelineConfig, load_config


def write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("path", ["configs/demo.yaml", "configs/demo-s3.yaml"])
def test_demo_configs_validate(path):
    cfg = load_config(path)
    assert cfg.train.model == "clipflow-tiny"
    assert cfg.crawl.allow_private_networks is True


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"crawl": {"max_pagse": 3}}, "crawl.max_pagse"),
        ({"crawl": {"max_pages": -1}}, "crawl.max_pages"),
        ({"download": {"resize_mode": "stretch"}}, "download.resize_mode"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"storage": {"root": "x", "bucket": "y"}}, "storage.bucket"),
        ({"evaluate": {"datasets": [{"name": "a"}]}}, "evaluate.datasets.0.path"),
        ({"stages": {}}, "stages"),
        ({"download": {"encode_format": "png", "encode_quality": 95}}, "download"),
    ],
)
def test_bad_config_names_the_field(tmp_path, data, field):
    with pytest.raises(ConfigError, match=rf"{field}"):
        load_config(write(tmp_path, data))


def test_private_networks_off_by_default():
    assert PipelineConfig().crawl.allow_private_networks is False


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg = load_config(
        write(tmp_path, {"storage": {"root": "out"}, "crawl": {"wat_files": ["a.wat.gz"]}})
    )
    assert cfg.storage.root == str(tmp_path / "out")
    assert cfg.crawl.wat_files == [str(tmp_path / "a.wat.gz")]


def test_s3_root_is_kept_verbatim(tmp_path):
    cfg = load_config(write(tmp_path, {"storage": {"root": "s3://bucket/prefix"}}))
    assert cfg.storage.root == "s3://bucket/prefix" and cfg.storage.is_s3


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("crawl: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
