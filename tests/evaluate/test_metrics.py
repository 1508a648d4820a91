"""Metric definitions against independent computations (scikit-learn, brute-force loops)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion

from model.linear_probe import fewshot_indices, linear_probe
from model.retrieval import PairEmbeddings, retrieval_recall
from model.zeroshot import classification_report, instantiate_prompts, topk_accuracy


def test_prompts_are_templates_formatted_with_each_class():
    prompts = instantiate_prompts(["cat", "ankle boot"], ["a photo of a {c}.", "{c}!"])
    assert prompts == [["a photo of a cat.", "cat!"], ["a photo of a ankle boot.", "ankle boot!"]]


def test_classification_report_against_sklearn_and_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 12, generator=g)
    # Class 11 never occurs as a target: it must not count in mean_per_class_recall.
    targets = torch.randint(0, 11, (500,), generator=g)
    names = [f"c{i}" for i in range(12)]
    report = classification_report(logits, targets, names)
    predictions = logits.argmax(1)
    assert report.metrics["acc1"] == pytest.approx((predictions == targets).float().mean().item())
    top5 = sum(
        int(t in row)
        for t, row in zip(
            targets.tolist(), logits.argsort(1, descending=True)[:, :5].tolist(), strict=True
        )
    )
    assert report.metrics["acc5"] == pytest.approx(top5 / 500)
    with pytest.warns(UserWarning):  # sklearn warns about the class only ever predicted
        expected = balanced_accuracy_score(targets.numpy(), predictions.numpy())
    assert report.metrics["mean_per_class_recall"] == pytest.approx(expected)
    assert (report.confusion == sk_confusion(targets, predictions, labels=range(12))).all()
    assert report.per_class[11] == {"class": "c11", "support": 0, "correct": 0, "recall": None,
                                    "precision": report.per_class[11]["precision"]}  # fmt: skip
    assert sum(row["support"] for row in report.per_class) == 500


def test_acc5_is_undefined_below_five_classes():
    report = classification_report(
        torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]), ["a", "b"]
    )
    assert report.metrics == {"acc1": 0.5, "acc5": None, "mean_per_class_recall": 0.5}
    assert topk_accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]), 2) == 1.0


def _brute_force_recall(images, texts, owner, k):
    scores = texts @ images.t()
    image_hits = [
        int(owner[t] in scores[t].argsort(descending=True)[:k].tolist()) for t in range(len(texts))
    ]
    text_hits = []
    for i in range(len(images)):
        top = scores[:, i].argsort(descending=True)[:k].tolist()
        text_hits.append(int(any(owner[t] == i for t in top)))
    return sum(image_hits) / len(texts), sum(text_hits) / len(images)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_retrieval_recall_with_several_captions_per_image(chunk):
    g = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=-1)
    counts = torch.randint(1, 4, (40,), generator=g)  # 1 to 3 captions per image
    owner = torch.repeat_interleave(torch.arange(40), counts)
    texts = torch.nn.functional.normalize(
        images[owner] + 0.9 * torch.randn(len(owner), 16, generator=g), dim=-1
    )
    metrics = retrieval_recall(PairEmbeddings(images, texts, owner), ks=(1, 5, 10), chunk=chunk)
    for k in (1, 5, 10):
        image_recall, text_recall = _brute_force_recall(images, texts, owner.tolist(), k)
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(image_recall)
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(text_recall)
    assert 0 < metrics["image_retrieval_recall@1"] < metrics["image_retrieval_recall@10"] < 1


def _clusters(n_per_class, seed, spread=0.12):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(
        torch.randn(4, 8, generator=torch.Generator().manual_seed(99)), dim=-1
    )
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), 8, generator=g), labels


def test_linear_probe_separates_clusters_full_and_few_shot():
    names = ["a", "b", "c", "d"]
    full = linear_probe(_clusters(50, 0), _clusters(30, 1), names, inverse_regularization=10.0)
    assert full.metrics["acc1"] >= 0.95 and full.metrics["acc5"] is None
    few = linear_probe(_clusters(50, 0), _clusters(30, 1), names, 10.0, fewshot_k=5)
    assert few.metrics["acc1"] >= 0.8
    noise = linear_probe(_clusters(50, 0, spread=30.0), _clusters(30, 1, spread=30.0), names)
    assert noise.metrics["acc1"] < 0.6


def test_fewshot_indices_pick_k_per_class_deterministically():
    labels = torch.tensor([0, 1, 2] * 10)
    chosen = fewshot_indices(labels, 4, 3, seed=3)
    assert torch.bincount(labels[chosen]).tolist() == [4, 4, 4]
    assert torch.equal(chosen, fewshot_indices(labels, 4, 3, seed=3))
    with pytest.raises(ValueError, match="class 1 has only 10 train samples"):
        fewshot_indices(torch.cat([labels, torch.tensor([0, 2])]), 11, 3)
