"""Config: unknown keys and bad values fail up front, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.core.config import ConfigError, PipelineConfig, load_config

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("path", ["configs/demo.yaml", "configs/demo-s3.yaml"])
def test_demo_configs_validate(path):
    cfg = load_config(path)
    assert cfg.train.model in ("clipflow-tiny", "clipflow-tiny-p7")  # the 28 px tiny models
    assert cfg.crawl.allow_private_networks is True


def test_production_config_has_every_guard_on():
    cfg = load_config(REPO_CONFIGS / "production.yaml")
    assert not cfg.crawl.allow_private_networks and not cfg.crawl.allow_private_hosts
    assert cfg.crawl.respect_robots and cfg.crawl.per_host_delay >= 1.0
    assert cfg.curate.decontaminate


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


@pytest.mark.parametrize(
    "crawl",
    [{"allow_private_networks": True}, {"allow_private_hosts": ["10.0.0.5:8080"]}],
)
def test_private_networks_need_the_environment_too(monkeypatch, crawl):
    """A config (a UI parameter) alone cannot open the SSRF guard: the process must also run
    with CLIPFLOW_ALLOW_PRIVATE_NETWORKS=1, which the demo and the tests set themselves."""
    monkeypatch.delenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS", raising=False)
    with pytest.raises(ConfigError, match="needs CLIPFLOW_ALLOW_PRIVATE_NETWORKS=1"):
        load_config({"crawl": crawl})
    monkeypatch.setenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS", "true")  # only "1" opens it
    with pytest.raises(ConfigError, match="CLIPFLOW_ALLOW_PRIVATE_NETWORKS"):
        load_config({"crawl": crawl})
    monkeypatch.setenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS", "1")
    load_config({"crawl": crawl})
    monkeypatch.delenv("CLIPFLOW_ALLOW_PRIVATE_NETWORKS")
    load_config(REPO_CONFIGS / "production.yaml")  # the guard on needs nothing


def test_credentials_in_the_s3_endpoint_are_refused():
    with pytest.raises(ConfigError, match="s3_endpoint_url: .*must not carry credentials"):
        load_config({"storage": {"s3_endpoint_url": "http://key:secret@127.0.0.1:9000"}})
    with pytest.raises(ConfigError, match="s3_endpoint_url: .*http\\(s\\) URL"):
        load_config({"storage": {"s3_endpoint_url": "127.0.0.1:9000"}})
    load_config({"storage": {"s3_endpoint_url": "http://127.0.0.1:9000"}})
