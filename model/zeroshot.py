"""Zero-shot classification as in the CLIP paper: prompt-ensembled class embeddings.

Works with any model that has ``encode_image`` / ``encode_text`` (ours or OpenCLIP's) and
any tokenizer callable ``tok(texts) -> LongTensor``. Metrics follow CLIP_benchmark:
``acc1``/``acc5`` are top-k accuracy, ``mean_per_class_recall`` is scikit-learn's
``balanced_accuracy_score`` (the mean recall over classes that occur in the targets).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], Tensor]


def instantiate_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Prompts per class, ``template.format(c=classname)`` as CLIP_benchmark builds them."""
    return [[template.format(c=name) for template in templates] for name in classnames]


@torch.inference_mode()
def zeroshot_classifier(
    model: Any,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
) -> Tensor:
    """Classifier weights (embed_dim, C): per class, the mean of its unit prompt embeddings,
    renormalised to unit length (prompt ensembling)."""
    prompts = [p for per_class in instantiate_prompts(classnames, templates) for p in per_class]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    embeddings = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
    weights = F.normalize(embeddings.mean(dim=1), dim=-1)  # (C, D)
    log.info("zero-shot classifier: %d classes x %d prompts", len(classnames), len(templates))
    return weights.t().contiguous()  # (D, C)


@torch.inference_mode()
def classify(
    model: Any,
    loader: Iterable[tuple[Tensor, Tensor]],
    classifier: Tensor,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Logits (N, C) = 100 * unit image embedding @ classifier, and targets (N,)."""
    logits, targets = [], []
    for images, labels in loader:
        features = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)
        logits.append((100.0 * features @ classifier).cpu())
        targets.append(labels.cpu())
    if not logits:
        raise ValueError("classify: the loader yielded no images")
    return torch.cat(logits), torch.cat(targets)


def topk_accuracy(logits: Tensor, targets: Tensor, k: int) -> float:
    """Fraction of rows whose target is among the k highest logits."""
    top = logits.topk(k, dim=1).indices  # (N, k)
    return float((top == targets.view(-1, 1)).any(dim=1).float().mean().item())


def confusion_matrix(targets: Tensor, predictions: Tensor, num_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted class."""
    flat = targets.long() * num_classes + predictions.long()
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).numpy()


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics (fractions), the confusion matrix and one row per class."""

    metrics: dict[str, float | None]
    confusion: np.ndarray
    per_class: list[dict[str, Any]]


def classification_report(
    logits: Tensor, targets: Tensor, classnames: Sequence[str]
) -> ClassificationReport:
    """acc1, acc5 (None with fewer than 5 classes), mean_per_class_recall, plus per class:
    support, recall (None without support) and precision (None when never predicted)."""
    num_classes = len(classnames)
    predictions = logits.argmax(dim=1)
    confusion = confusion_matrix(targets, predictions, num_classes)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    correct = np.diag(confusion)
    recall = [float(c / s) if s else None for c, s in zip(correct, support, strict=True)]
    precision = [float(c / p) if p else None for c, p in zip(correct, predicted, strict=True)]
    present = [r for r in recall if r is not None]
    metrics: dict[str, float | None] = {
        "acc1": topk_accuracy(logits, targets, 1),
        # CLIP_benchmark reports acc5 only for 5 or more classes (NaN otherwise).
        "acc5": topk_accuracy(logits, targets, 5) if num_classes >= 5 else None,
        "mean_per_class_recall": float(np.mean(present)),
    }
    per_class = [
        {
            "class": name,
            "support": int(support[i]),
            "correct": int(correct[i]),
            "recall": recall[i],
            "precision": precision[i],
        }
        for i, name in enumerate(classnames)
    ]
    return ClassificationReport(metrics, confusion, per_class)
