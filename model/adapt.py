"""Few-shot adaptation of a frozen CLIP: learned prompts (CoOp) and a cache adapter (Tip-Adapter).

Both keep every weight of both towers unchanged and use K labelled images per class from a
dataset's train split, drawn with a fixed seed (``fewshot_indices``, as the linear probe).

- **Prompt tuning** (Zhou et al., 2022, "Learning to Prompt for Vision-Language Models",
  CoOp): the words in front of the class name become learned vectors in the token-embedding
  space, shared by all classes ("unified context"). They start as the embeddings of
  ``init`` ("a photo of a"), so before any step the classifier is the hand-written prompt
  "a photo of a {c}."; then SGD with momentum and a cosine schedule minimises the
  cross-entropy of ``exp(logit_scale) * image @ text`` over the K-shot image features,
  in mini-batches, as CoOp trains.
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
from dataclasses import dataclass
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
    """Settings of CoOp's training (its defaults: SGD 0.002, momentum 0.9, batch 32)."""

    init: str = "a photo of a"
    epochs: int = 50
    lr: float = 0.002
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class AdapterSearch:
    """Tip-Adapter's grids for the residual ratio ``alpha`` and the sharpness ``beta``."""

    alphas: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0)
    betas: Sequence[float] = (1.0, 3.0, 5.5, 10.0, 20.0)


class LearnedPrompts:
    """Class prompts whose context words are parameters: ``[SOT] ctx_1..ctx_n name . [EOT]``.
    ``ctx`` is the only parameter; the model is used, not owned."""

    def __init__(self, model: Any, tokenizer: Tokenizer, classnames: Sequence[str], init: str):
        self.model = model
        init_tokens = tokenizer([init])[0]
        n_ctx = int(init_tokens.argmax()) - 1  # tokens between start- and end-of-text
        if n_ctx < 1:
            raise ValueError(f"prompt tuning: init {init!r} has no tokens")
        prompts = instantiate_prompts(classnames, [f"{init} {{c}}."])
        self.tokens = tokenizer([p[0] for p in prompts])
        if not torch.equal(self.tokens[:, 1 : 1 + n_ctx], init_tokens[1 : 1 + n_ctx].expand(
            len(classnames), n_ctx
        )):  # fmt: skip
            raise ValueError(f"prompt tuning: {init!r} tokenises differently before a class name")
        with torch.no_grad():
            start = model.token_embedding(init_tokens[1 : 1 + n_ctx].to(self.tokens.device))
        self.ctx = torch.nn.Parameter(start.detach().clone().float())  # (n_ctx, W)
        self.n_ctx = n_ctx

    def __call__(self) -> Tensor:
        """Unit text features (C, D) of the class prompts with the current context."""
        model, tokens = self.model, self.tokens
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        with torch.no_grad():
            embedded = model.token_embedding(tokens[:, :length])  # (C, T, W)
        ctx = self.ctx.to(embedded.dtype).expand(len(tokens), -1, -1)
        x = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + self.n_ctx :]], dim=1)
        x = x + model.positional_embedding[:length]
        x = model.transformer.forward_pooled(x, eot, is_causal=True)
        return F.normalize(model.ln_final(x) @ model.text_projection, dim=-1)


def tune_prompts(
    model: Any,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    features: Tensor,
    labels: Tensor,
    settings: PromptTuning,
) -> Tensor:
    """Learn the context on unit image ``features`` (N, D) and ``labels``; the class
    embeddings (D, C) it ends with. The model's parameters get no gradient and stay as
    they were."""
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        prompts = LearnedPrompts(model, tokenizer, classnames, settings.init)
        scale = model.logit_scale.exp().detach()
        generator = torch.Generator().manual_seed(settings.seed)
        steps_per_epoch = math.ceil(len(labels) / settings.batch_size)
        total = settings.epochs * steps_per_epoch
        optimizer = torch.optim.SGD([prompts.ctx], lr=settings.lr, momentum=0.9)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total, 1))
        for _ in range(settings.epochs):
            order = torch.randperm(len(labels), generator=generator)
            for batch in order.split(settings.batch_size):
                logits = scale * features[batch] @ prompts().t()
                loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        with torch.no_grad():
            return prompts().t().contiguous()
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
    prompt_settings: PromptTuning = PromptTuning(),
    adapter_search: AdapterSearch = AdapterSearch(),
) -> FewShotResult:
    """``method`` ("prompt_tuning" or "adapter") at each K of ``shots``, on unit image
    features of the train and test splits; ``zeroshot`` (D, C) is the hand-prompted
    classifier. Metrics: ``zeroshot_acc1`` and ``acc1_{K}shot``."""
    (train_x, train_y), (test_x, test_y) = train, test
    metrics = {"zeroshot_acc1": _acc1(test_x @ zeroshot, test_y)}
    details: dict[str, Any] = {"method": method, "seed": prompt_settings.seed, "shots": {}}
    for k in shots:
        support, held = support_and_validation(train_y, k, len(classnames), prompt_settings.seed)
        if method == "prompt_tuning":
            weights = tune_prompts(model, tokenizer, classnames, train_x[support],
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
