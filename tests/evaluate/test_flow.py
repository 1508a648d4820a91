"""The evaluate stage end to end under Prefect: results.json / results.md / plots, artifacts,
manifest skip and overrides, the CLI, and an S3 root (moto_server)."""

from __future__ import annotations

import json

import pytest
import yaml

from flows.evaluate import evaluate_flow
from tasks.core.config import load_config
from tasks.core.manifest import manifest_uri
from tasks.core.storage import Storage
from tasks.evaluate.stage import load_model
from tests.finished_stages import record_finished
from tests.fixtures_prefect import run_artifacts


def _config(root, datasets, **storage):
    return {"name": "evaltest", "storage": {"root": str(root), **storage},
            "evaluate": {"batch_size": 64, "device": "cpu", "datasets": datasets}}  # fmt: skip


def _datasets(fashion, emoji):
    return [
        {"name": "fashion", "path": str(fashion)},
        {"name": "emoji_ret", "path": str(emoji), "task": "zeroshot_retrieval"},
        {"name": "fashion_lp", "path": str(fashion), "task": "linear_probe", "fewshot_k": 10},
    ]


def _finish_train_stage(cfg, checkpoint) -> None:
    """What the train stage leaves behind: latest.pt and its manifest."""
    storage = Storage(cfg.storage)
    storage.write_bytes(storage.uri("train", "checkpoints", "latest.pt"), checkpoint.read_bytes())
    record_finished(cfg, train={"steps": 30})


@pytest.mark.integration
def test_flow_writes_results_publishes_artifacts_and_skips(
    prefect_harness, tmp_root, fashion_small, emoji_retrieval_small, trained_checkpoint
):
    cfg = load_config(_config(tmp_root, _datasets(fashion_small, emoji_retrieval_small)))
    _finish_train_stage(cfg, trained_checkpoint)
    state = evaluate_flow(config=cfg.model_dump(mode="json"), return_state=True)
    manifest = state.result()
    assert manifest["skipped"] is False
    assert manifest["counts"] == {"fashion/test": 240, "emoji_ret/test": 160,
                                  "fashion_lp/train": 300, "fashion_lp/test": 240}  # fmt: skip
    results = json.loads((tmp_root / "eval" / "results.json").read_text())
    assert list(results) == ["results"]
    assert [(r["dataset"], r["task"]) for r in results["results"]] == [
        ("fashion", "zeroshot_classification"),
        ("emoji_ret", "zeroshot_retrieval"),
        ("fashion_lp", "linear_probe"),
    ]
    for row in results["results"]:
        assert set(row) == {"dataset", "task", "metrics"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["metrics"].values())
    fashion = results["results"][0]["metrics"]
    assert set(fashion) == {"acc1", "acc5", "mean_per_class_recall"} and fashion["acc1"] > 0.15
    table = (tmp_root / "eval" / "results.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:] == [
        "fashion", "emoji_ret", "fashion_lp"]  # fmt: skip
    for name in ("per_class_accuracy.png", "confusion_matrix.png"):
        assert (tmp_root / "eval" / "fashion" / name).read_bytes()[:4] == b"\x89PNG"
    probe = json.loads((tmp_root / "eval" / "fashion_lp" / "linear_probe.json").read_text())
    assert probe["chosen_on_validation"] is True and 1e-4 <= probe["C"] <= 1e4
    per_class = (tmp_root / "eval" / "fashion" / "per_class.csv").read_text().splitlines()
    assert len(per_class) == 11 and sum(int(line.split(",")[1]) for line in per_class[1:]) == 240
    artifacts = run_artifacts(state.state_details.flow_run_id)
    assert {"evaluate-results", "evaluate-results-md"} <= set(artifacts)
    assert "fashion_lp" in str(artifacts["evaluate-results-md"].data)

    assert evaluate_flow(config=cfg.model_dump(mode="json"))["skipped"] is True


@pytest.mark.integration
def test_cli_evaluates_any_openclip_checkpoint(
    prefect_harness, tmp_root, tmp_path, fashion_small, random_checkpoint, openclip_tiny
):
    """`clipflow evaluate CONFIG --checkpoint PATH --model JSON` on a plain OpenCLIP state dict;
    the override is part of the config hash, so a second checkpoint reruns the stage."""
    from flows.cli import main

    config_path = tmp_path / "eval.yaml"
    datasets = [{"name": "fashion", "path": str(fashion_small)}]
    config_path.write_text(yaml.safe_dump(_config(tmp_root, datasets)))
    storage = Storage(load_config(config_path).storage)
    args = ["evaluate", str(config_path), "--model", str(openclip_tiny)]
    assert main([*args, "--checkpoint", str(random_checkpoint)]) == 0
    first = storage.read_json(manifest_uri(storage, "evaluate"))
    assert first["extra"]["checkpoint"] == str(random_checkpoint)
    other = tmp_path / "other.pt"
    other.write_bytes(random_checkpoint.read_bytes())
    assert main([*args, "--checkpoint", str(other)]) == 0
    second = storage.read_json(manifest_uri(storage, "evaluate"))
    assert second["extra"]["checkpoint"] == str(other)
    assert second["config_hash"] != first["config_hash"]
    assert second["extra"]["metrics"] == first["extra"]["metrics"]  # same weights


@pytest.mark.integration
def test_flow_on_an_s3_root_with_s3_dataset_and_checkpoint(
    prefect_harness, s3_server, s3_bucket, emoji_retrieval_small, trained_checkpoint
):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint_url})
    fs.put(str(emoji_retrieval_small), f"{s3_bucket}/sets/emoji", recursive=True)
    datasets = [{"name": "emoji", "path": f"s3://{s3_bucket}/sets/emoji",
                 "task": "zeroshot_retrieval"}]  # fmt: skip
    root = f"s3://{s3_bucket}/run"
    cfg = load_config(_config(root, datasets, s3_endpoint_url=s3_server.endpoint_url))
    _finish_train_stage(cfg, trained_checkpoint)
    manifest = evaluate_flow(config=cfg.model_dump(mode="json"))
    assert manifest["counts"] == {"emoji/test": 160}
    results = Storage(cfg.storage).read_json(f"{root}/eval/results.json")["results"]
    assert results[0]["dataset"] == "emoji" and "text_retrieval_recall@10" in results[0]["metrics"]


def test_missing_checkpoint_is_a_clear_error(tmp_root, fashion_small):
    cfg = load_config(_config(tmp_root, [{"name": "f", "path": str(fashion_small)}]))
    with pytest.raises(FileNotFoundError, match=r"train/checkpoints/latest.pt not found"):
        load_model(cfg, Storage(cfg.storage))


def test_task_that_does_not_fit_the_dataset_names_it(
    tmp_root, fashion_small, random_checkpoint, openclip_tiny
):
    from model.eval_data import EvalDataError
    from tasks.evaluate.stage import evaluate_dataset

    spec = {"name": "f", "path": str(fashion_small), "task": "zeroshot_retrieval"}
    cfg = load_config(_config(tmp_root, [spec]))
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
        update={"checkpoint": str(random_checkpoint), "model": str(openclip_tiny)})})  # fmt: skip
    storage = Storage(cfg.storage)
    with pytest.raises(
        EvalDataError, match=r"task zeroshot_retrieval does not fit .*fashion_small"
    ):
        evaluate_dataset(cfg.evaluate.datasets[0], cfg, load_model(cfg, storage), storage)


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"datasets": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}, "unique"),
        ({"datasets": [{"name": "a", "path": "/x", "templates": ["a photo"]}]}, "'{c}'"),
        ({"datasets": [{"name": "a/b", "path": "/x"}]}, "names a folder"),
        ({"datasets": [{"name": "a", "path": "/x", "fewshot_k": 0}]}, "fewshot_k"),
        ({"recall_k": [0, 5]}, "at least 1"),
    ],
)
def test_bad_evaluate_config_is_refused_naming_the_field(evaluate, message):
    from tasks.core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config({"evaluate": evaluate})
