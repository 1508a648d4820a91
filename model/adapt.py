"""Few-shot adaptation of a frozen CLIP: learned prompts (CoOp) and a cache adapter (Tip-Adapter).

Both keep every weight of both towers unchanged and use K labelled images per class from a
dataset's train split, drawn with a fixed seed (``fewshot_indices``, as the linear probe).

- **Prompt tuning** (Zhou et al., 2022, "Learning to Prompt for Vision-Language Models",
  CoOp): the words in front of the class name become learned vectors in the token-embedding
  space. Each of the dataset's zero-shot templates keeps its own context, initialised to
  the template's words ("a blurry photo of a" ...), and a class's embedding is the
  renormalised mean over templates, as in the zero-shot ensemble: before any step the
  classifier *is* the zero-shot classifier. The context is shared by all classes, or one
  per class (CoOp's class-specific context, ``class_specific``). SGD with momentum and a
  cosine schedule minimises, in mini-batches of the K-shot image features, the
  cross-entropy of ``exp(logit_scale) * image @ text`` plus KgCoOp's term (Yao et al.,
  2023, "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization"):
  ``kg_weight`` times the mean squared distance of each class embedding from its
  zero-shot one, which keeps a few shots from pulling the prompts away from what the
  text tower knows.
- **Adapter** (Zhang et al., 2022, "Tip-Adapter: Training-free Adaption of CLIP"): a cache
  whose keys are the K-shot image features and values their one-hot labels;
  ``logits = 100 * f @ W_zeroshot + alpha * exp(-beta * (1 - f @ keys.T)) @ values``. Chosen
  over CLIP-Adapter because it needs no training (so no optimiser settings to tune, and it is
  exact to reproduce) and the paper reports it at or above CLIP-Adapter at 16 shots. ``alpha``
  and ``beta`` are searched on a held-out set of at most K *other* train images per class
  (never the test split), then the cache of the K shots is scored on the test split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from model.linear_probe import fewshot_indices
from model.zeroshot import Tokenizer, instantiate_prompts

FEW_SHOT = ("prompt_tuning", "adapter")
"""The evaluate tasks this module runs."""


@dataclass(frozen=True)
class PromptTuning:
    """Settings of the training (CoOp's: SGD 0.002, momentum 0.9, batch 32, 50 epochs)
    and of the prompts."""

    epochs: int = 50
    lr: float = 0.002
    batch_size: int = 32
    kg_weight: float = 8.0
    """KgCoOp's weight on the distance of the learned class embeddings from the zero-shot
    ones; 0 is plain CoOp."""
    class_specific: bool = True
    """One context per class (CoOp's CSC) instead of one shared by all classes."""
    seed: int = 0


@dataclass(frozen=True)
class AdapterSearch:
    """Tip-Adapter's grids for the residual ratio ``alpha`` and the sharpness ``beta``."""

    alphas: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0)
    betas: Sequence[float] = (1.0, 3.0, 5.5, 10.0, 20.0)


class LearnedPrompts:
    """The class prompts of each template, ``[SOT] ctx_1..ctx_n name suffix [EOT]``, where
    ``ctx`` starts as the template's words before ``{c}``. The contexts are the only
    parameters; the model is used, not owned."""

    def __init__(self, model: Any, tokenizer: Tokenizer, classnames: Sequence[str],
                 templates: Sequence[str], class_specific: bool = False):  # fmt: skip
        self.model, self.num_classes = model, len(classnames)
        self.contexts: list[torch.nn.Parameter] = []
        rows = []
        for template in templates:
            words = tokenizer([template.split("{c}")[0].strip()])[0]
            n_ctx = int(words.argmax()) - 1  # tokens between start- and end-of-text
            tokens = tokenizer([p[0] for p in instantiate_prompts(classnames, [template])])
            if not torch.equal(tokens[:, 1 : 1 + n_ctx], words[1 : 1 + n_ctx].expand(
                len(classnames), n_ctx
            )):  # fmt: skip
                raise ValueError(f"prompt tuning: {template!r}'s words before the class name "
                                 "tokenise differently in the prompt")  # fmt: skip
            with torch.no_grad():
                start = model.token_embedding(words[1 : 1 + n_ctx]).float()  # (n_ctx, W)
            if class_specific:
                start = start.expand(len(classnames), -1, -1)  # (C, n_ctx, W)
            self.contexts.append(torch.nn.Parameter(start.detach().clone()))
            rows.append(tokens)
        if not any(c.numel() for c in self.contexts):
            raise ValueError("prompt tuning: no template has words before the class name")
        self.tokens = torch.cat(rows)  # (T * C, L), template by template
        self.eot = self.tokens.argmax(dim=-1)
        self.length = int(self.eot.max()) + 1
        with torch.no_grad():
            self.embedded = model.token_embedding(self.tokens[:, : self.length])

    def __call__(self) -> Tensor:
        """The classifier (D, C): per class, the renormalised mean of its templates' unit
        text features with the current contexts."""
        model, c = self.model, self.num_classes
        x = torch.cat([
            torch.cat([fixed[:, :1], ctx.to(fixed.dtype).expand(c, -1, -1),
                       fixed[:, 1 + ctx.shape[-2] :]], dim=1)
            for ctx, fixed in zip(self.contexts, self.embedded.split(c), strict=True)
        ])  # fmt: skip
        x = x + model.positional_embedding[: self.length]
        x = model.transformer.forward_pooled(x, self.eot, is_causal=True)
        features = F.normalize(model.ln_final(x) @ model.text_projection, dim=-1)
        mean = features.float().view(len(self.contexts), c, -1).mean(dim=0)
        return F.normalize(mean, dim=-1).t()


def tune_prompts(
    model: Any,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    features: Tensor,
    labels: Tensor,
    settings: PromptTuning,
) -> Tensor:
    """Learn the contexts on unit image ``features`` (N, D) and ``labels``, starting from
    ``templates``; the classifier (D, C) it ends with. The model's parameters get no
    gradient and stay as they were."""
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        prompts = LearnedPrompts(model, tokenizer, classnames, templates, settings.class_specific)
        with torch.no_grad():
            zeroshot = prompts()  # the templates' zero-shot classifier, KgCoOp's anchor
        scale = model.logit_scale.exp().detach()
        generator = torch.Generator().manual_seed(settings.seed)
        steps_per_epoch = math.ceil(len(labels) / settings.batch_size)
        total = settings.epochs * steps_per_epoch
        optimizer = torch.optim.SGD(prompts.contexts, lr=settings.lr, momentum=0.9)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total, 1))
        for _ in range(settings.epochs):
            order = torch.randperm(len(labels), generator=generator)
            for batch in order.split(settings.batch_size):
                weights = prompts()
                loss = F.cross_entropy(scale * features[batch] @ weights, labels[batch])
                if settings.kg_weight:
                    distance = (weights - zeroshot).square().sum(dim=0).mean()
                    loss = loss + settings.kg_weight * distance
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        with torch.no_grad():
            return prompts().contiguous()
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)


def tip_adapter_logits(
    features: Tensor, zeroshot: Tensor, keys: Tensor, values: Tensor, alpha: float, beta: float
) -> Tensor:
    """Tip-Adapter's logits for unit ``features`` (M, D): zero-shot ``zeroshot`` (D, C) plus
    the cache (keys (N, D) unit features, values (N, C) one-hot)."""
    affinity = features @ keys.t()
    cache = torch.exp(-beta * (1 - affinity)) @ values
    return 100 * features @ zeroshot + alpha * cache


@dataclass(frozen=True)
class AdapterFit:
    alpha: float
    beta: float
    validation_acc1: float | None


def fit_tip_adapter(
    zeroshot: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    validation: tuple[Tensor, Tensor] | None,
    num_classes: int,
    search: AdapterSearch,
) -> AdapterFit:
    """``alpha`` and ``beta`` with the best held-out accuracy (the first of equals, in grid
    order); the grids' middle values when there is nothing held out."""
    values = F.one_hot(key_labels, num_classes).float()
    if validation is None or len(validation[1]) == 0:
        return AdapterFit(search.alphas[len(search.alphas) // 2],
                          search.betas[len(search.betas) // 2], None)  # fmt: skip
    features, labels = validation
    best: AdapterFit | None = None
    for alpha in search.alphas:
        for beta in search.betas:
            logits = tip_adapter_logits(features, zeroshot, keys, values, alpha, beta)
            acc = float((logits.argmax(dim=-1) == labels).float().mean())
            if best is None or acc > (best.validation_acc1 or 0.0):
                best = AdapterFit(alpha, beta, acc)
    assert best is not None
    return best


def support_and_validation(
    labels: Tensor, k: int, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Indices of the K-shot support set and of a disjoint held-out set of up to K images
    per class (what is left of each class, if fewer), both drawn with ``seed``."""
    support = fewshot_indices(labels, k, num_classes, seed)
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[support] = False
    generator = torch.Generator().manual_seed(seed + 1)
    held = []
    for c in range(num_classes):
        members = ((labels == c) & rest).nonzero().flatten()
        held.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return support, torch.cat(held).sort().values


@dataclass(frozen=True)
class FewShotResult:
    """Test accuracy at each K beside the zero-shot baseline, and what each K chose."""

    metrics: dict[str, float]
    details: dict[str, Any]


def _acc1(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=-1) == labels).float().mean())


def few_shot(
    method: str,
    model: Any,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    zeroshot: Tensor,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    shots: Sequence[int],
    templates: Sequence[str] = (),
    prompt_settings: PromptTuning = PromptTuning(),
    adapter_search: AdapterSearch = AdapterSearch(),
) -> FewShotResult:
    """``method`` ("prompt_tuning" or "adapter") at each K of ``shots``, on unit image
    features of the train and test splits; ``zeroshot`` (D, C) is the classifier of
    ``templates`` (the prompts prompt tuning starts from). Metrics: ``zeroshot_acc1`` and ``acc1_{K}shot``."""
    (train_x, train_y), (test_x, test_y) = train, test
    metrics = {"zeroshot_acc1": _acc1(test_x @ zeroshot, test_y)}
    details: dict[str, Any] = {"method": method, "seed": prompt_settings.seed, "shots": {}}
    if method == "prompt_tuning":
        details["settings"] = asdict(prompt_settings)
    for k in shots:
        support, held = support_and_validation(train_y, k, len(classnames), prompt_settings.seed)
        if method == "prompt_tuning":
            weights = tune_prompts(model, tokenizer, classnames, templates, train_x[support],
                                   train_y[support], prompt_settings)  # fmt: skip
            logits = test_x @ weights
            details["shots"][k] = {"support": len(support)}
        elif method == "adapter":
            keys, key_labels = train_x[support], train_y[support]
            fit = fit_tip_adapter(zeroshot, keys, key_labels, (train_x[held], train_y[held]),
                                  len(classnames), adapter_search)  # fmt: skip
            values = F.one_hot(key_labels, len(classnames)).float()
            logits = tip_adapter_logits(test_x, zeroshot, keys, values, fit.alpha, fit.beta)
            details["shots"][k] = {"support": len(support), "held_out": len(held),
                                   "alpha": fit.alpha, "beta": fit.beta,
                                   "validation_acc1": fit.validation_acc1}  # fmt: skip
        else:
            raise ValueError(f"unknown few-shot method {method!r}")
        metrics[f"acc1_{k}shot"] = _acc1(logits, test_y)
    return FewShotResult(metrics, details)
