"""The evaluate stage: zero-shot classification, retrieval and linear probes on benchmark sets.

    {root}/eval/results.json       {"results": [{"dataset", "task", "metrics"}, ...]}, metrics
                                   as fractions (CLIP_benchmark's keys)
    {root}/eval/results.md         one table, one row per dataset
    {root}/eval/{dataset}/         per_class.csv, confusion_matrix.csv, PNG plots and
                                   predictions.parquet (classification: each test image's
                                   prediction); metrics.json (every task);
                                   linear_probe.json (linear probes: the C used, how chosen)
    {root}/eval/search/            the image-embedding index of every training image, which
                                   ``clipflow inspect`` searches (``search_index``)

The checkpoint is ``evaluate.checkpoint`` (any OpenCLIP-format file) or the train stage's
``latest.pt``; the architecture is ``evaluate.model``, else the checkpoint's own
``model_config``, else ``train.model``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model import create_model, get_tokenizer, image_transform, load_checkpoint
from model.adapt import FEW_SHOT, AdapterSearch, PromptTuning, few_shot
from model.eval_data import (
    RETRIEVAL,
    EvalDataError,
    WdsEvalDataset,
    make_loader,
    read_dataset_info,
)
from model.linear_probe import image_features, linear_probe
from model.retrieval import embed_pairs, retrieval_recall
from model.zeroshot import ClassificationReport, classification_report, classify
from model.zeroshot import zeroshot_classifier as build_classifier
from tasks.core.config import EvalDataset, PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.redact import redact_text, redact_url
from tasks.core.stage import PLAIN_RUN, RunContext
from tasks.core.storage import Storage
from tasks.evaluate.search_index import build_search_index

log = logging.getLogger(__name__)
ZERO_SHOT_CLASSIFIERS = ("zeroshot_classification", *FEW_SHOT)
"""Tasks that build the prompt-ensembled zero-shot classifier (and need templates)."""


@dataclass
class LoadedModel:
    """A model ready to evaluate, with its tokenizer, image transform and provenance."""

    model: Any
    tokenizer: Any
    transform: Any
    device: str
    checkpoint: str
    architecture: str


@dataclass
class DatasetResult:
    """One dataset's metrics, sample counts and (classification) report."""

    name: str
    task: str
    metrics: dict[str, float | None]
    samples: dict[str, int]
    report: ClassificationReport | None = None
    classnames: list[str] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    """What a fitted task chose: the linear probe's C (and how), the adapter's alpha and
    beta per K; written to ``{task}.json``."""
    predictions: pa.Table | None = None
    """zeroshot_classification: one row per test image (tar, key, target, predicted and their
    similarities), for the most confused examples in ``clipflow inspect``."""


def default_checkpoint(cfg: PipelineConfig, storage: Storage) -> str:
    """``evaluate.checkpoint`` or the train stage's ``train/checkpoints/latest.pt``."""
    return cfg.evaluate.checkpoint or storage.uri("train", "checkpoints", "latest.pt")


def _device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("evaluate.device is 'cuda' but no CUDA device is available")
    return setting


def load_model(cfg: PipelineConfig, storage: Storage) -> LoadedModel:
    """Build the architecture and load the checkpoint into it (strict key and shape checks)."""
    uri = default_checkpoint(cfg, storage)
    shown = redact_url(uri)  # a presigned URL's signature stays out of logs and errors
    options = storage.storage_options() if uri.startswith("s3://") else {}
    try:
        with fsspec.open(uri, "rb", **options) as f:
            checkpoint = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"evaluate: checkpoint {shown} not found (run the train stage or pass --checkpoint)"
        ) from None
    except Exception as e:  # the reader's own message may carry the URL, secrets and all
        message = redact_text(f"{type(e).__name__}: {e}")
        raise RuntimeError(f"evaluate: cannot read checkpoint {shown}: {message}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{shown}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    architecture: Any = cfg.evaluate.model or checkpoint.get("model_config") or cfg.train.model
    model = create_model(architecture)
    load_checkpoint(model, checkpoint)
    vocab = cfg.evaluate.vocab or (cfg.train.vocab if cfg.evaluate.checkpoint is None else None)
    tokenizer = get_tokenizer(vocab, context_length=model.context_length)
    device = _device(cfg.evaluate.device)
    model = model.to(device).eval()
    described = architecture if isinstance(architecture, str) else "checkpoint model_config"
    log.info("evaluating %s (%s) on %s", shown, described, device)
    transform = image_transform(model.config.vision.image_size, is_train=False)
    return LoadedModel(model, tokenizer, transform, device, uri, described)


def _loader(dataset: WdsEvalDataset, cfg: PipelineConfig) -> Any:
    return make_loader(dataset, cfg.evaluate.batch_size, cfg.evaluate.workers)


def evaluate_dataset(
    spec: EvalDataset, cfg: PipelineConfig, lm: LoadedModel, storage: Storage
) -> DatasetResult:
    """Run one configured dataset's task; every sample of the split is counted."""
    options = storage.storage_options() if spec.path.startswith("s3://") else {}
    needs_templates = spec.task in ZERO_SHOT_CLASSIFIERS and spec.templates is None
    info = read_dataset_info(spec.path, needs_templates, options)
    if (info.dataset_type == RETRIEVAL) != (spec.task == "zeroshot_retrieval"):
        raise EvalDataError(
            f"evaluate.datasets[{spec.name!r}]: task {spec.task} does not fit {spec.path}, "
            f"a {info.dataset_type} dataset (its dataset_type.txt)"
        )
    test = WdsEvalDataset(info, spec.split, lm.transform, options)
    if spec.task == "zeroshot_retrieval":
        pairs = embed_pairs(lm.model, lm.tokenizer, _loader(test, cfg), lm.device)
        metrics: dict[str, float | None] = dict(retrieval_recall(pairs, cfg.evaluate.recall_k))
        return DatasetResult(spec.name, spec.task, metrics, {spec.split: len(pairs.images)})
    classnames = list(info.classnames or [])
    if spec.task in FEW_SHOT:
        return _few_shot(spec, cfg, lm, info, test, classnames, options)
    if spec.task == "zeroshot_classification":
        templates = spec.templates or list(info.templates or [])
        weights = build_classifier(lm.model, lm.tokenizer, classnames, templates, lm.device)
        logits, targets = classify(lm.model, _loader(test, cfg), weights, lm.device)
        report = classification_report(logits, targets, classnames)
        samples = {spec.split: len(targets)}
        return DatasetResult(
            spec.name, spec.task, report.metrics, samples, report, classnames,
            predictions=prediction_table(logits, targets, test.keys_read),
        )  # fmt: skip
    train = WdsEvalDataset(info, spec.train_split, lm.transform, options)
    train_xy = image_features(lm.model, _loader(train, cfg), lm.device)
    test_xy = image_features(lm.model, _loader(test, cfg), lm.device)
    probe = linear_probe(
        train_xy, test_xy, classnames, cfg.evaluate.linear_probe_c,
        spec.fewshot_k, cfg.evaluate.linear_probe_max_iter, cfg.evaluate.seed,
        cfg.evaluate.linear_probe_validation,
    )  # fmt: skip
    samples = {spec.train_split: len(train_xy[1]), spec.split: len(test_xy[1])}
    chosen = {"C": probe.inverse_regularization, "validation_acc1": probe.validation_acc1,
              "chosen_on_validation": cfg.evaluate.linear_probe_c is None}  # fmt: skip
    return DatasetResult(spec.name, spec.task, probe.metrics, samples, probe, classnames, chosen)


def prediction_table(
    logits: torch.Tensor, targets: torch.Tensor, keys: list[tuple[str, str]]
) -> pa.Table | None:
    """tar (file name), key, target, predicted, and the image's cosine similarity to each of
    the two classes' prompt embeddings (logits / 100), one row per image; None when the images
    were read in worker processes (keys unknown here)."""
    if len(keys) != len(targets):
        log.info("predictions not written: images were read by DataLoader workers")
        return None
    similarity = logits.float() / 100.0  # classify()'s logits are 100 * cosine
    predicted = similarity.argmax(dim=1)
    rows = torch.arange(len(targets))
    return pa.table({
        "tar": [os.path.basename(url) for url, _ in keys],
        "key": [key for _, key in keys],
        "target": targets.numpy().astype(np.int32),
        "predicted": predicted.numpy().astype(np.int32),
        "target_similarity": similarity[rows, targets].numpy(),
        "predicted_similarity": similarity[rows, predicted].numpy(),
    })  # fmt: skip


def _few_shot(
    spec: EvalDataset,
    cfg: PipelineConfig,
    lm: LoadedModel,
    info: Any,
    test: WdsEvalDataset,
    classnames: list[str],
    options: dict[str, Any],
) -> DatasetResult:
    """Prompt tuning or the adapter at each K of ``spec.shots``, beside the zero-shot
    classifier of the same prompts; the towers stay frozen (model.adapt)."""
    e = cfg.evaluate
    templates = spec.templates or list(info.templates or [])
    zeroshot = build_classifier(lm.model, lm.tokenizer, classnames, templates, lm.device).cpu()
    train = WdsEvalDataset(info, spec.train_split, lm.transform, options)
    train_xy = image_features(lm.model, _loader(train, cfg), lm.device)
    test_xy = image_features(lm.model, _loader(test, cfg), lm.device)
    settings = PromptTuning(e.prompt_tuning_epochs, e.prompt_tuning_lr,
                            e.prompt_tuning_batch_size, e.prompt_tuning_kg_weight,
                            e.prompt_tuning_class_specific, e.seed)  # fmt: skip
    result = few_shot(
        spec.task, lm.model.cpu(), lm.tokenizer, classnames, zeroshot, train_xy, test_xy,
        spec.shots, templates, settings,
        AdapterSearch(tuple(e.adapter_alphas), tuple(e.adapter_betas)),
    )  # fmt: skip
    lm.model.to(lm.device)
    samples = {spec.train_split: len(train_xy[1]), spec.split: len(test_xy[1])}
    return DatasetResult(spec.name, spec.task, dict(result.metrics), samples,
                         classnames=classnames, probe=result.details)  # fmt: skip


def _json_safe(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """NaN is not JSON: an undefined metric is written as null."""
    return {k: None if v is None or math.isnan(v) else v for k, v in metrics.items()}


def write_outputs(storage: Storage, results: list[DatasetResult], lm: LoadedModel) -> dict:
    """results.json, results.md and each dataset's folder under ``{root}/eval``; their URIs."""
    rows = [{"dataset": r.name, "task": r.task, "metrics": _json_safe(r.metrics)} for r in results]
    results_uri = storage.uri("eval", "results.json")
    markdown_uri = storage.uri("eval", "results.md")
    outputs: dict[str, Any] = {"results": results_uri, "markdown": markdown_uri, "datasets": {}}
    for r in results:
        folder = storage.uri("eval", r.name)
        storage.write_json(
            f"{folder}/metrics.json",
            {"task": r.task, "metrics": _json_safe(r.metrics), "samples": r.samples,
             "checkpoint": redact_url(lm.checkpoint), "architecture": lm.architecture},
        )  # fmt: skip
        files = [f"{folder}/metrics.json"]
        if r.probe is not None:  # linear_probe.json, prompt_tuning.json, adapter.json
            storage.write_json(f"{folder}/{r.task}.json", r.probe)
            files.append(f"{folder}/{r.task}.json")
        if r.report is not None:
            files += _write_classification(storage, folder, r)
        if r.predictions is not None:
            sink = io.BytesIO()
            pq.write_table(r.predictions, sink)
            storage.write_bytes(f"{folder}/predictions.parquet", sink.getvalue())
            files.append(f"{folder}/predictions.parquet")
        outputs["datasets"][r.name] = files
    markdown = results_markdown(rows, redact_url(lm.checkpoint), lm.architecture)
    storage.write_bytes(markdown_uri, markdown.encode())
    storage.write_json(results_uri, {"results": rows})
    return outputs


def _write_classification(storage: Storage, folder: str, r: DatasetResult) -> list[str]:
    assert r.report is not None
    written = {
        "per_class.csv": per_class_csv(r.report.per_class).encode(),
        "confusion_matrix.csv": confusion_csv(r.report.confusion, r.classnames).encode(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in (
            ("per_class_accuracy.png", plot_per_class),
            ("confusion_matrix.png", plot_confusion),
        ):
            path = os.path.join(tmp, name)
            plot(r.report, r.classnames, f"{r.name} ({r.task})", path)
            with open(path, "rb") as fh:
                written[name] = fh.read()
    for name, data in written.items():
        storage.write_bytes(f"{folder}/{name}", data)
    return [f"{folder}/{name}" for name in written]


_METRIC_ORDER = ("acc1", "acc5", "mean_per_class_recall")


def results_markdown(rows: list[dict[str, Any]], checkpoint: str, architecture: str) -> str:
    """One table, one row per dataset; the union of the tasks' metrics as columns (percent)."""
    keys = [k for k in _METRIC_ORDER if any(k in r["metrics"] for r in rows)]
    keys += sorted({k for r in rows for k in r["metrics"]} - set(keys), key=_recall_order)
    header = "| dataset | task | " + " | ".join(keys) + " |"
    lines = [
        "# Evaluation results",
        "",
        f"Checkpoint `{checkpoint}` ({architecture}); metrics in percent.",
        "",
        header,
        "|" + "---|" * (len(keys) + 2),
    ]
    for r in rows:
        cells = [_percent(r["metrics"].get(k)) for k in keys]
        lines.append(f"| {r['dataset']} | {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _recall_order(key: str) -> tuple[str, int]:
    name, _, k = key.partition("@")
    return (name, int(k) if k.isdigit() else 0)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def per_class_csv(per_class: list[dict[str, Any]]) -> str:
    """class,support,correct,recall,precision (empty cell = undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ("class", "support", "correct", "recall", "precision")
    writer.writerow(columns)
    for row in per_class:
        writer.writerow(["" if row[k] is None else row[k] for k in columns])
    return out.getvalue()


def confusion_csv(confusion: np.ndarray, classnames: list[str]) -> str:
    """Rows: true class; columns: predicted class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classnames])
    for name, row in zip(classnames, confusion.tolist(), strict=True):
        writer.writerow([name, *row])
    return out.getvalue()


_MAX_BARS = 60  # beyond this a per-class bar chart is unreadable: show the extremes


def plot_per_class(
    report: ClassificationReport, classnames: list[str], title: str, path: str
) -> None:
    """Horizontal bars of each class's recall (its accuracy on its own images); with many
    classes (ImageNet), the 30 worst and 30 best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(name, row["recall"]) for name, row in zip(classnames, report.per_class, strict=True)]
    bars = [(name, 100 * r) for name, r in bars if r is not None]
    subtitle = ""
    if len(bars) > _MAX_BARS:
        ranked = sorted(bars, key=lambda bar: bar[1])
        bars = ranked[: _MAX_BARS // 2] + ranked[-_MAX_BARS // 2 :]
        subtitle = f" ({_MAX_BARS // 2} worst and best classes)"
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(bars) + 1)))
    ax.barh(range(len(bars)), [r for _, r in bars], color="#4c72b0")
    ax.set_yticks(range(len(bars)), [n for n, _ in bars], fontsize=7 if len(bars) > 30 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("per-class accuracy (recall, %)")
    ax.set_title(f"{title}: acc1 {_percent(report.metrics['acc1'])}%{subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(
    report: ClassificationReport, classnames: list[str], title: str, path: str
) -> None:
    """The confusion matrix, each row normalised by its class's support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = report.confusion.astype(np.float64)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(16.0, max(5.5, 0.3 * len(classnames) + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if len(classnames) <= 2 * _MAX_BARS:  # more names than that would only overprint
        ticks = range(len(classnames))
        fontsize = 6 if len(classnames) > 30 else 8
        ax.set_xticks(ticks, classnames, rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks, classnames, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nconfusion matrix, rows normalised", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_evaluate(cfg: PipelineConfig, storage: Storage, ctx: RunContext = PLAIN_RUN) -> StageResult:
    """The stage body: every configured dataset, then results.json / results.md / plots."""
    if not cfg.evaluate.datasets:
        raise ValueError("evaluate.datasets is empty: configure at least one benchmark set")
    lm = load_model(cfg, storage)
    results = [evaluate_dataset(spec, cfg, lm, storage) for spec in cfg.evaluate.datasets]
    for r in results:
        log.info("%s %s: %s (%s)", r.name, r.task, _json_safe(r.metrics), r.samples)
    outputs = write_outputs(storage, results, lm)
    if cfg.evaluate.search_index and storage.glob("shards/*.tar"):
        outputs["search"] = build_search_index(storage, lm, cfg.evaluate.search_batch_size)
    counts = {f"{r.name}/{split}": n for r in results for split, n in r.samples.items()}
    extra = {
        "checkpoint": redact_url(lm.checkpoint),
        "architecture": lm.architecture,
        "metrics": {r.name: _json_safe(r.metrics) for r in results},
    }
    return StageResult(counts=counts, outputs=outputs, extra=extra)
