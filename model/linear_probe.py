"""Linear probe: multinomial logistic regression on frozen, L2-normalised image features.

As in the CLIP paper (appendix A.3), an L-BFGS logistic regression is fitted on the train
split's features and scored on the test split: scikit-learn's objective (L2 penalty 1/2 |W|^2
on the weights, not the intercept, plus C x the summed cross-entropy), minimised full-batch
with torch's L-BFGS in float64, which is many times faster than scikit-learn's solver here. Its regularisation ``C`` is
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


# Candidate C values: 10^-4 .. 10^4, 8 per decade. The search fits the 9 decades first, then
# halves the step around the best (CLIP_benchmark's find_peak): 15 fits, not 65.
C_GRID = np.logspace(-4, 4, 65)
_COARSE_STEP = 8


@dataclass(frozen=True)
class LinearProbeReport(ClassificationReport):
    """The test metrics, plus the chosen ``C`` and its accuracy on the held-out split."""

    inverse_regularization: float = 1.0
    validation_acc1: float | None = None


@dataclass(frozen=True)
class LogisticRegression:
    """A fitted multinomial logistic regression over the classes seen in training."""

    classes: Tensor  # (K,) labels
    weight: Tensor  # (D, K)
    bias: Tensor  # (K,)
    evaluations: int  # objective evaluations the solver took

    def log_proba(self, features: Tensor) -> Tensor:
        """(N, D) -> (N, K) log-probabilities over ``classes``."""
        return F.log_softmax(features.double() @ self.weight + self.bias, dim=-1)

    def predict(self, features: Tensor) -> Tensor:
        return self.classes[self.log_proba(features).argmax(dim=-1)]


def _fit(
    features: Tensor,
    labels: Tensor,
    c: float,
    max_iter: int,
    start: LogisticRegression | None = None,
) -> LogisticRegression:
    """Minimise mean cross-entropy + |W|^2 / (2 C N) (scikit-learn's C-weighted objective
    divided by N, and its gradient tolerance 1e-4), from ``start``'s weights when given (a
    warm start from a neighbouring C converges in a fraction of the iterations)."""
    classes, targets = torch.unique(labels, return_inverse=True)
    x = features.double().clone()  # a normal tensor, even from inference-mode features
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64)
    bias = torch.zeros(len(classes), dtype=torch.float64)
    if start is not None and torch.equal(start.classes, classes):
        weight, bias = start.weight.clone(), start.bias.clone()
    weight.requires_grad_()
    bias.requires_grad_()
    solver = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, tolerance_grad=1e-4, tolerance_change=1e-10,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip
    evaluations = 0

    def objective() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        solver.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, targets)
        loss = loss + weight.square().sum() / (2 * c * len(targets))
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(objective)
    return LogisticRegression(classes, weight.detach(), bias.detach(), evaluations)


def choose_c(
    fit: tuple[Tensor, Tensor], validation: tuple[Tensor, Tensor], max_iter: int
) -> tuple[LogisticRegression, float, float]:
    """The classifier, ``C`` in ``C_GRID`` and validation accuracy of the best ``C`` (ties: the
    stronger penalty)."""
    fitted: dict[int, LogisticRegression] = {}
    scores: dict[int, float] = {}

    def score(i: int) -> float:
        if i not in scores:
            nearest = min(fitted, key=lambda j: (abs(j - i), j), default=None)
            start = None if nearest is None else fitted[nearest]
            fitted[i] = _fit(*fit, float(C_GRID[i]), max_iter, start)
            predicted = fitted[i].predict(validation[0])
            scores[i] = (predicted == validation[1]).double().mean().item()
            log.debug("linear probe: C=%.4g validation acc1 %.4f", C_GRID[i], scores[i])
        return scores[i]

    def best(candidates: Iterable[int]) -> int:
        return max(sorted(set(candidates)), key=lambda i: (score(i), -i))

    peak = best(range(0, len(C_GRID), _COARSE_STEP))
    step = _COARSE_STEP // 2
    while step:
        peak = best([max(peak - step, 0), peak, min(peak + step, len(C_GRID) - 1)])
        step //= 2
    return fitted[peak], float(C_GRID[peak]), scores[peak]


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
    validation_acc1, start = None, None
    if inverse_regularization is None:
        fit_rows, held_rows = holdout_split(len(labels), validation_fraction, seed)
        fit = _fewshot(features[fit_rows], labels[fit_rows], fewshot_k, len(classnames), seed)
        start, inverse_regularization, validation_acc1 = choose_c(
            fit, (features[held_rows], labels[held_rows]), max_iter
        )
        log.info(
            "linear probe: chose C=%.4g (validation acc1 %.4f on %d held-out samples)",
            inverse_regularization, validation_acc1, len(held_rows),
        )  # fmt: skip
        # Few-shot refits on its k-shot samples only; a full probe on every train sample.
        features, labels = fit if fewshot_k is not None else (features, labels)
    else:
        features, labels = _fewshot(features, labels, fewshot_k, len(classnames), seed)
    classifier = _fit(features, labels, inverse_regularization, max_iter, start)
    log.info(
        "linear probe: fitted on %d samples (%d features) in %d evaluations",
        len(labels),
        features.shape[1],
        classifier.evaluations,
    )
    # Classes missing from the train split get -inf, so they rank last in top-k.
    scores = np.full((len(test[0]), len(classnames)), -np.inf, dtype=np.float64)
    scores[:, classifier.classes.numpy()] = classifier.log_proba(test[0]).numpy()
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
