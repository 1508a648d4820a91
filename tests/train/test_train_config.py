"""The train section is defined once, in model/, and the pipeline embeds it: a typo or a bad
value fails naming the field, whether it reaches the pipeline or ``model.train`` directly."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.train_config import TrainConfig, TrainRun, load_train_config
from tasks.core.config import ConfigError, PipelineConfig, load_config
from tasks.core.storage import Storage
from tasks.train.launcher import prepare_run

SECTION = {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_pipeline_embeds_the_model_schema() -> None:
    assert PipelineConfig.model_fields["train"].annotation is TrainConfig
    assert type(load_config({"train": {"lr": 1e-3}}).train) is TrainConfig
    run = {f.name for f in dataclasses.fields(TrainRun)}
    assert issubclass(TrainRun, TrainConfig)
    assert run - SECTION == {"shards", "output", "storage_options", "data_fingerprint"}


def test_the_ui_form_shows_every_train_field_with_its_default() -> None:
    schema = PipelineConfig.model_json_schema()["$defs"]["TrainConfig"]
    assert schema["additionalProperties"] is False
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {name: p["default"] for name, p in schema["properties"].items()} == defaults
    assert schema["properties"]["precision"]["enum"] == ["fp32", "amp_bf16", "amp_fp16"]


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"batchsize": 3}, "train.batchsize"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"batch_size": "many"}, "train.batch_size"),
        ({"lr": -1}, "train.lr"),
        ({"precision": "fp8"}, "train.precision"),
        ({"crop_scale_min": 0}, "train.crop_scale_min"),
        ({"crop_ratio_max": 0.5}, "train.crop_ratio_max"),
        ({"loss": "infonce"}, "train.loss"),
        ({"grad_clip_norm": 0}, "train.grad_clip_norm"),
        ({"init_logit_bias": -10.0}, "train.init_logit_bias"),
        ({"rdzv_port": 70000}, "train.rdzv_port"),
    ],
)
def test_bad_train_keys_name_the_field(train: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config({"train": train})


def test_model_train_checks_the_same_fields_without_pydantic(tmp_path: Path) -> None:
    where = {"shards": str(tmp_path / "shards"), "output": str(tmp_path / "out")}
    with pytest.raises(ValueError, match=r"train\.batch_size must be an integer >= 1, got 0"):
        TrainRun(**where, batch_size=0)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**where, "lr": "5e-4"}))  # YAML reads 5e-4 as a string
    with pytest.raises(ValueError, match=r"train\.lr must be a number > 0, got '5e-4'"):
        load_train_config(str(path))
    # A quoted "false" is a string, which was read as true (flips on): now refused.
    path.write_text(yaml.safe_dump({**where, "hflip": "false"}))
    with pytest.raises(ValueError, match=r"train\.hflip must be true or false, got 'false'"):
        load_train_config(str(path))
    path.write_text(yaml.safe_dump({**where, "batchsize": 3}))
    with pytest.raises(ValueError, match=r"unknown train keys \['batchsize'\]"):
        load_train_config(str(path))


def test_the_stage_writes_what_model_train_reads(tmp_path: Path) -> None:
    cfg = load_config(
        {"storage": {"root": str(tmp_path)}, "train": {"lr": 1e-3, "nproc_per_node": 2}}
    )
    prepare_run(cfg, Storage(cfg.storage))
    run = load_train_config(str(tmp_path / "train" / "config.yaml"))
    assert {name: getattr(run, name) for name in SECTION} == dataclasses.asdict(cfg.train)
    assert (run.shards, run.output) == (str(tmp_path / "shards"), str(tmp_path / "train"))


def test_model_train_imports_neither_prefect_nor_the_pipeline() -> None:
    script = (
        "import sys, model.train\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'prefect', 'pydantic', 'tasks', 'flows'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_pin_to_cores_gives_each_local_rank_its_own_block_of_cores() -> None:
    # In a child process: the affinity would otherwise stay with the test process. It prints
    # the cores it may use, then what pinning returns with more ranks than cores (nothing
    # done), then the last rank's block with one rank per core, and its affinity afterwards.
    probe = (
        "import os; from model.train import pin_to_cores; "
        "cores = sorted(os.sched_getaffinity(0)); "
        "print(cores, pin_to_cores(0, len(cores) + 1), "
        "sorted(pin_to_cores(len(cores) - 1, len(cores))), sorted(os.sched_getaffinity(0)))"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=repo).stdout.strip()  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))
    assert out == f"{cores} None {[cores[-1]]} {[cores[-1]]}"
