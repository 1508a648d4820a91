"""Parity with CLIP_benchmark 1.6.2 (its Python API) on the same checkpoints and WDS sets:
acc1 / acc5 / mean-per-class-recall and recall@k equal within 0.1 points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demo import benchmark_sets, offline_data
from model.eval_data import WdsEvalDataset, make_loader, read_dataset_info
from model.retrieval import embed_pairs, retrieval_recall
from model.zeroshot import classification_report, classify, zeroshot_classifier
from tasks.core.config import load_config
from tasks.core.storage import Storage
from tasks.evaluate.stage import evaluate_dataset, load_model
from tests.evaluate.conftest import TINY

TOLERANCE = 1e-3  # 0.1 points, as fractions


def _accuracy_item(output, target, topk=(1,)):
    """CLIP_benchmark's accuracy() with .item() instead of float() of a 1-element array,
    which raises on numpy >= 2.4; nothing else changed."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [
        correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item() / n for k in topk
    ]


@pytest.fixture
def clip_benchmark(monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification

    monkeypatch.setattr(zeroshot_classification, "accuracy", _accuracy_item)
    return zeroshot_classification


def openclip_model(name: str, checkpoint):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def reference_classification(zc, model, preprocess, tokenizer, root, batch_size=64) -> dict:
    from clip_benchmark.datasets.builder import build_wds_dataset

    ds = build_wds_dataset("parity", transform=preprocess, split="test", data_dir=str(root))
    loader = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=0)
    return zc.evaluate(model, loader, tokenizer, ds.classes, ds.templates, "cpu", amp=False)


def reference_retrieval(model, preprocess, tokenizer, root, batch_size=64) -> dict:
    from clip_benchmark.datasets.builder import build_wds_dataset
    from clip_benchmark.metrics import zeroshot_retrieval

    ds = build_wds_dataset("parity", transform=preprocess, split="test", data_dir=str(root))
    loader = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=0)
    return zeroshot_retrieval.evaluate(
        model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )


def assert_close(ours: dict, reference: dict, keys) -> None:
    for key in keys:
        assert abs(ours[key] - reference[key]) <= TOLERANCE, (key, ours[key], reference[key])


def stage_config(tmp_path, checkpoint, datasets, model=None):
    return load_config(
        {
            "storage": {"root": str(tmp_path / "root")},
            "evaluate": {"checkpoint": str(checkpoint), "model": model, "batch_size": 50,
                         "device": "cpu", "datasets": datasets},
        }
    )  # fmt: skip


CLS_KEYS = ("acc1", "acc5", "mean_per_class_recall")
RET_KEYS = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)]


def test_dataset_text_files_read_as_clip_benchmark_reads_them(tmp_path, fashion_small):
    from clip_benchmark.datasets.builder import build_wds_dataset

    root = tmp_path / "padded"
    benchmark_sets.write_set(root, benchmark_sets.BenchmarkSet(
        "classification",
        [benchmark_sets.Split("test", [("k0", benchmark_sets.png_bytes(np.zeros((4, 4), np.uint8)), "cls", b"1")])],
        ["  t-shirt ", "pair of trousers\t"], ["  a photo of a {c}.", "{c}, blurry.  "],
    ))  # fmt: skip
    (root / "classnames.txt").write_text("  t-shirt \r\npair of trousers\t\r\n")
    ours = read_dataset_info(str(root), needs_templates=True)
    ref = build_wds_dataset("x", transform=None, split="test", data_dir=str(root))
    assert ours.classnames == ref.classes == ["t-shirt", "pair of trousers"]
    assert ours.templates == ref.templates == ["a photo of a {c}.", "{c}, blurry."]


def test_random_openclip_model_matches_clip_benchmark(
    clip_benchmark, fashion_small, random_checkpoint
):
    model, preprocess, tokenizer = openclip_model(TINY, random_checkpoint)
    reference = reference_classification(
        clip_benchmark, model, preprocess, tokenizer, fashion_small
    )
    info = read_dataset_info(str(fashion_small), needs_templates=True)
    loader = make_loader(WdsEvalDataset(info, "test", preprocess), batch_size=37)
    weights = zeroshot_classifier(model, tokenizer, info.classnames, info.templates)
    logits, targets = classify(model, loader, weights)
    assert len(targets) == 240
    assert_close(
        classification_report(logits, targets, info.classnames).metrics, reference, CLS_KEYS
    )


def test_stage_on_trained_checkpoint_matches_clip_benchmark(
    clip_benchmark, tmp_path, fashion_small, emoji_retrieval_small, trained_checkpoint
):
    """Our model package loads the checkpoint; CLIP_benchmark runs OpenCLIP on the same file."""
    model, preprocess, tokenizer = openclip_model(TINY, trained_checkpoint)
    ref_cls = reference_classification(clip_benchmark, model, preprocess, tokenizer, fashion_small)
    ref_ret = reference_retrieval(model, preprocess, tokenizer, emoji_retrieval_small)
    assert ref_cls["acc1"] > 0.15, "the briefly trained model should beat chance (0.1)"
    cfg = stage_config(tmp_path, trained_checkpoint, [
        {"name": "fashion", "path": str(fashion_small)},
        {"name": "emoji", "path": str(emoji_retrieval_small), "task": "zeroshot_retrieval"},
    ])  # fmt: skip
    storage = Storage(cfg.storage)
    lm = load_model(cfg, storage)
    cls = evaluate_dataset(cfg.evaluate.datasets[0], cfg, lm, storage)
    ret = evaluate_dataset(cfg.evaluate.datasets[1], cfg, lm, storage)
    assert cls.samples == {"test": 240} and ret.samples == {"test": 160}
    assert_close(cls.metrics, ref_cls, CLS_KEYS)
    assert_close(ret.metrics, ref_ret, RET_KEYS)


def test_retrieval_functions_match_clip_benchmark_on_random_model(
    emoji_retrieval_small, random_checkpoint
):
    model, preprocess, tokenizer = openclip_model(TINY, random_checkpoint)
    reference = reference_retrieval(model, preprocess, tokenizer, emoji_retrieval_small)
    info = read_dataset_info(str(emoji_retrieval_small))
    loader = make_loader(WdsEvalDataset(info, "test", preprocess), batch_size=45)
    pairs = embed_pairs(model, tokenizer, loader)
    assert pairs.texts.shape[0] == 2 * pairs.images.shape[0] == 320
    assert_close(retrieval_recall(pairs), reference, RET_KEYS)


def test_vit_b_32_random_checkpoint_matches_clip_benchmark(clip_benchmark, tmp_path):
    """The full-size architecture, on 24 real MNIST digits with CLIP's MNIST prompt."""
    import open_clip

    images, labels = offline_data.mnist("test")
    root = tmp_path / "mnist24"
    benchmark_sets.write_set(root, benchmark_sets.BenchmarkSet(
        "classification", [benchmark_sets.Split("test", benchmark_sets.labelled_samples(images[:24], labels[:24]))],
        benchmark_sets.MNIST_CLASSNAMES, benchmark_sets.MNIST_TEMPLATES[:1],
    ))  # fmt: skip
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit-b-32.pt"
    torch.save({"state_dict": open_clip.create_model("ViT-B-32").state_dict()}, checkpoint)
    model, preprocess, tokenizer = openclip_model("ViT-B-32", checkpoint)
    reference = reference_classification(clip_benchmark, model, preprocess, tokenizer, root)
    del model
    cfg = stage_config(tmp_path, checkpoint, [{"name": "mnist24", "path": str(root)}], "ViT-B-32")
    storage = Storage(cfg.storage)
    result = evaluate_dataset(cfg.evaluate.datasets[0], cfg, load_model(cfg, storage), storage)
    assert result.samples == {"test": 24}
    assert_close(result.metrics, reference, CLS_KEYS)


def test_resnet_checkpoint_evaluates_as_clip_benchmark_on_open_clip(
    clip_benchmark, tmp_path, fashion_small
):
    """The stage builds the modified ResNet from the checkpoint's own model_config (no
    evaluate.model) and runs it in eval mode, as CLIP_benchmark runs OpenCLIP's."""
    import open_clip

    from model import create_model
    from model.config import CONFIG_DIR

    open_clip.add_model_config(CONFIG_DIR / "clipflow-tiny-rn.json")
    torch.manual_seed(0)
    ours = create_model("clipflow-tiny-rn")
    with torch.no_grad():
        for norm in (m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5)
            norm.running_var.uniform_(0.5, 1.5)
    checkpoint = tmp_path / "tiny-rn.pt"
    torch.save({"state_dict": ours.state_dict(), "model_config": ours.config.to_dict()}, checkpoint)
    model, preprocess, tokenizer = openclip_model("clipflow-tiny-rn", checkpoint)
    reference = reference_classification(
        clip_benchmark, model, preprocess, tokenizer, fashion_small
    )
    cfg = stage_config(tmp_path, checkpoint, [{"name": "fashion", "path": str(fashion_small)}])
    storage = Storage(cfg.storage)
    lm = load_model(cfg, storage)
    assert lm.architecture == "checkpoint model_config" and not lm.model.training
    result = evaluate_dataset(cfg.evaluate.datasets[0], cfg, lm, storage)
    assert result.samples == {"test": 240}
    assert_close(result.metrics, reference, CLS_KEYS)
