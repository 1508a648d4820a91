"""Linear probe: multinomial logistic regression on frozen, L2-normalised image features.

As in the CLIP paper (appendix A.3), an L-BFGS logistic regression (scikit-learn) is fitted
on the train split's features and scored on the test split. ``fewshot_k`` keeps k randomly
chosen training samples per class (the few-shot protocol CLIP_benchmark follows).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.zeroshot import ClassificationReport, classification_report

log = logging.getLogger(__name__)


@torch.inference_mode()
def image_features(
    model: Any, loader: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """Unit image features (N, D) and labels (N,) for every batch of the loader."""
    features, labels = [], []
    for images, targets in loader:
        features.append(F.normalize(model.encode_image(images.to(device)).float(), dim=-1).cpu())
        labels.append(targets.cpu())
    if not features:
        raise ValueError("image_features: the loader yielded no images")
    return torch.cat(features), torch.cat(labels)


def fewshot_indices(labels: Tensor, k: int, num_classes: int, seed: int = 0) -> Tensor:
    """Indices of k samples per class, drawn without replacement with ``seed``; every class
    must have at least k samples."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) < k:
            raise ValueError(f"few-shot k={k}: class {c} has only {len(members)} train samples")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


def linear_probe(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classnames: Sequence[str],
    inverse_regularization: float = 1.0,
    fewshot_k: int | None = None,
    max_iter: int = 1000,
    seed: int = 0,
) -> ClassificationReport:
    """Fit on ``train`` (features, labels), report acc1/acc5/mean_per_class_recall on ``test``.

    ``inverse_regularization`` is scikit-learn's ``C`` (larger = weaker L2 penalty).
    """
    from sklearn.linear_model import LogisticRegression

    features, labels = train
    if fewshot_k is not None:
        keep = fewshot_indices(labels, fewshot_k, len(classnames), seed)
        features, labels = features[keep], labels[keep]
    if len(torch.unique(labels)) < 2:
        raise ValueError("linear probe: the train split needs samples of at least two classes")
    classifier = LogisticRegression(
        C=inverse_regularization, max_iter=max_iter, random_state=seed
    ).fit(features.numpy(), labels.numpy())
    log.info(
        "linear probe: fitted on %d samples (%d features) in %d iterations",
        len(labels),
        features.shape[1],
        int(np.max(classifier.n_iter_)),
    )
    # Classes missing from the train split get -inf, so they rank last in top-k.
    scores = np.full((len(test[0]), len(classnames)), -np.inf, dtype=np.float64)
    scores[:, classifier.classes_] = classifier.predict_log_proba(test[0].numpy())
    return classification_report(torch.from_numpy(scores), test[1], classnames)
