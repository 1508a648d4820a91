"""Linear probe: multinomial logistic regression on frozen, L2-normalised image features.

As in the CLIP paper (appendix A.3), an L-BFGS logistic regression (scikit-learn) is fitted
on the train split's features and scored on the test split. Its regularisation ``C`` is
chosen on a held-out part of the train features (the paper's validation sweep; CLIP_benchmark
sweeps its weight decay the same way): a coarse log grid, then a refinement around the best
value, then a refit with the chosen ``C`` on all of the train features. ``fewshot_k`` keeps k
randomly chosen training samples per class (CLIP_benchmark's few-shot protocol; the held-out
part is drawn first and the refit uses the k-shot samples only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


# Candidate C values: 10^-3 .. 10^3, 8 per decade. The search fits the 7 decades first, then
# halves the step around the best (CLIP_benchmark's find_peak): 13 fits, not 49.
C_GRID = np.logspace(-3, 3, 49)
_COARSE_STEP = 8


@dataclass(frozen=True)
class LinearProbeReport(ClassificationReport):
    """The test metrics, plus the chosen ``C`` and its accuracy on the held-out split."""

    inverse_regularization: float = 1.0
    validation_acc1: float | None = None


def _fit(features: Tensor, labels: Tensor, c: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(
        features.numpy(), labels.numpy()
    )


def choose_c(
    fit: tuple[Tensor, Tensor], validation: tuple[Tensor, Tensor], max_iter: int, seed: int
) -> tuple[float, float]:
    """The ``C`` in ``C_GRID`` with the best validation accuracy (ties: the stronger penalty),
    and that accuracy."""
    scores: dict[int, float] = {}

    def score(i: int) -> float:
        if i not in scores:
            classifier = _fit(*fit, float(C_GRID[i]), max_iter, seed)
            scores[i] = float(
                np.mean(classifier.predict(validation[0].numpy()) == validation[1].numpy())
            )
            log.debug("linear probe: C=%.4g validation acc1 %.4f", C_GRID[i], scores[i])
        return scores[i]

    def best(candidates: Iterable[int]) -> int:
        return max(sorted(set(candidates)), key=lambda i: (score(i), -i))

    peak = best(range(0, len(C_GRID), _COARSE_STEP))
    step = _COARSE_STEP // 2
    while step:
        peak = best([max(peak - step, 0), peak, min(peak + step, len(C_GRID) - 1)])
        step //= 2
    return float(C_GRID[peak]), scores[peak]


def holdout_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(fit, validation) indices: a random ``fraction`` of ``range(n)`` held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(n * fraction))
    if held >= n:
        raise ValueError(f"linear probe: {n} train samples leave none to fit after holding out")
    return order[held:].sort().values, order[:held].sort().values


def linear_probe(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classnames: Sequence[str],
    inverse_regularization: float | None = None,
    fewshot_k: int | None = None,
    max_iter: int = 1000,
    seed: int = 0,
    validation_fraction: float = 0.2,
) -> LinearProbeReport:
    """Fit on ``train`` (features, labels), report acc1/acc5/mean_per_class_recall on ``test``.

    ``inverse_regularization`` is scikit-learn's ``C`` (larger = weaker L2 penalty); None
    chooses it on ``validation_fraction`` of the train samples, held out.
    """
    features, labels = train
    validation_acc1 = None
    if inverse_regularization is None:
        fit_rows, held_rows = holdout_split(len(labels), validation_fraction, seed)
        fit = _fewshot(features[fit_rows], labels[fit_rows], fewshot_k, len(classnames), seed)
        inverse_regularization, validation_acc1 = choose_c(
            fit, (features[held_rows], labels[held_rows]), max_iter, seed
        )
        log.info(
            "linear probe: chose C=%.4g (validation acc1 %.4f on %d held-out samples)",
            inverse_regularization, validation_acc1, len(held_rows),
        )  # fmt: skip
        # Few-shot refits on its k-shot samples only; a full probe on every train sample.
        features, labels = fit if fewshot_k is not None else (features, labels)
    else:
        features, labels = _fewshot(features, labels, fewshot_k, len(classnames), seed)
    classifier = _fit(features, labels, inverse_regularization, max_iter, seed)
    log.info(
        "linear probe: fitted on %d samples (%d features) in %d iterations",
        len(labels),
        features.shape[1],
        int(np.max(classifier.n_iter_)),
    )
    # Classes missing from the train split get -inf, so they rank last in top-k.
    scores = np.full((len(test[0]), len(classnames)), -np.inf, dtype=np.float64)
    scores[:, classifier.classes_] = classifier.predict_log_proba(test[0].numpy())
    report = classification_report(torch.from_numpy(scores), test[1], classnames)
    return LinearProbeReport(
        report.metrics, report.confusion, report.per_class, inverse_regularization,
        validation_acc1,
    )  # fmt: skip


def _fewshot(
    features: Tensor, labels: Tensor, k: int | None, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """k train samples per class (all of them when k is None); at least two classes."""
    if k is not None:
        keep = fewshot_indices(labels, k, num_classes, seed)
        features, labels = features[keep], labels[keep]
    if len(torch.unique(labels)) < 2:
        raise ValueError("linear probe: the train split needs samples of at least two classes")
    return features, labels
