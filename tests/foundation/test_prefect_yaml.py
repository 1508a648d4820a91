"""Every prefect.yaml deployment: its entrypoint imports and its parameters validate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_validate(deployment):
    path, name = deployment["entrypoint"].split(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flow = getattr(module, name)
    validated = flow.validate_parameters(deployment.get("parameters", {}))
    assert "config" in validated
    from tasks.core.config import load_config

    load_config(REPO / validated["config"])


def test_every_stage_and_the_pipeline_are_deployed():
    names = {d["name"] for d in DEPLOYMENTS}
    assert {"pipeline", "crawl", "download", "curate", "shard", "train", "evaluate"} <= names
    assert any(s.get("cron") for d in DEPLOYMENTS for s in d.get("schedules", []))


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_the_ui_form_is_the_typed_pipeline_config(deployment):
    """The Prefect UI builds its run form from the flow's parameter schema: ``config`` is
    the typed PipelineConfig (every section, every train field with its default), or a path."""
    from tasks.core.config import PipelineConfig

    path, name = deployment["entrypoint"].split(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = getattr(module, name).parameters.model_dump()
    choices = schema["properties"]["config"]["anyOf"]
    assert {"$ref": "#/definitions/PipelineConfig"} in choices and {"type": "string"} in choices
    form = schema["definitions"]["PipelineConfig"]["properties"]
    assert set(form) == set(PipelineConfig.model_fields)
    train = schema["definitions"]["TrainConfig"]["properties"]
    assert train["batch_size"]["default"] == PipelineConfig().train.batch_size


def test_every_schedule_ships_inactive():
    schedules = [s for d in DEPLOYMENTS for s in d.get("schedules", [])]
    assert schedules and all(s.get("active") is False for s in schedules)


def test_only_the_demo_deployment_opens_private_networks():
    """Every deployment but ``demo`` runs the production config, whose SSRF guard is on."""
    from tasks.core.config import load_config

    for d in DEPLOYMENTS:
        config = load_config(REPO / d["parameters"]["config"])
        opened = config.crawl.allow_private_networks or bool(config.crawl.allow_private_hosts)
        assert opened == (d["name"] == "demo"), d["name"]
        if d["name"] != "demo":
            assert d["parameters"]["config"] == "configs/production.yaml", d["name"]
