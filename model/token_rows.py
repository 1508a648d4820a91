"""Train only the token-embedding rows that the training captions use (``train.token_rows``).

CLIP's token embedding is a (49,408, width) table, and a small dataset uses a small share of
its rows: the demo's 10,390 captions use 954. With the whole table as one parameter, every
step still writes a dense gradient for all rows (zeros where no token of the batch fell),
all-reduces it, takes its norm for clipping and runs AdamW over it. For the demo's tiny model
that table is 90% of the parameters and about a quarter of a CPU step.

``UsedTokenRows`` replaces the model's ``token_embedding`` for the run. It holds the rows of
the ids found in the training captions as the parameter ``rows`` and every other row in a
plain tensor outside autograd, DDP and the optimizer. Training with it gives the same
weights as with the whole table, bit for bit on the CPU:

- a row that no caption uses gets an exactly zero gradient under the whole table, so AdamW's
  moments for it stay zero and its update is the decoupled weight decay alone, ``p * (1 - lr
  * weight_decay)``, the same float32 product the fused kernel computes
  (``decay_unused``, called after each optimizer step);
- the used rows' gradients are the same sums in the same order (the lookup's backward adds
  each token's gradient into its row in token order, whichever table holds the row);
- the clipping norm leaves out zeros that added nothing (the CPU accumulates a float32 norm
  in double precision; a GPU sums in float32 in another order, so there the clipping factor
  may round differently in its last bit).

``tests/train/test_token_rows.py`` checks it: a run with ``token_rows: used`` ends with the
same state dict as one with ``all``, and so did the demo's 1,406 steps on two DDP ranks. The
state dict keeps OpenCLIP's layout, a (vocab, width) ``token_embedding.weight``, so
checkpoints load anywhere the whole table does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.data import training_caption
from model.tario import open_samples
from model.tokenizer import ClipTokenizer

_TOKENIZE_CHUNK = 4096
"""Captions tokenised at once while collecting the used ids."""


def _captions(shards: Iterable[str], storage_options: dict[str, Any]) -> Iterator[str]:
    """Every caption of the shards, as the loader reads it (``training_caption``); a caption
    that is not UTF-8 is never trained on (the loader skips its sample) and is left out."""
    for uri in shards:
        for sample in open_samples(uri, storage_options, ("txt",)):
            if "txt" in sample:
                try:
                    yield training_caption(sample["txt"])
                except UnicodeDecodeError:
                    continue


def used_token_ids(
    shards: Iterable[str], storage_options: dict[str, Any], tokenizer: ClipTokenizer
) -> Tensor:
    """Sorted ids (int64) of every token the loader can feed the model: each caption of the
    shards tokenised as the loader does, padding and end-of-text included."""
    seen: list[Tensor] = []
    chunk: list[str] = []
    for caption in _captions(shards, storage_options):
        chunk.append(caption)
        if len(chunk) == _TOKENIZE_CHUNK:
            seen.append(tokenizer(chunk).unique())
            chunk = []
    if chunk:
        seen.append(tokenizer(chunk).unique())
    if not seen:
        raise ValueError("train.token_rows 'used': the shards hold no caption")
    return torch.cat(seen).unique()


class UsedTokenRows(nn.Module):
    """A token embedding whose trainable parameter is only the rows of ``used`` ids.

    Looking up an id outside ``used`` is an error (the data changed under the run), never a
    silent zero. ``state_dict`` writes, and ``load_state_dict`` reads, the whole table as
    ``weight``."""

    def __init__(self, embedding: nn.Embedding, used: Tensor) -> None:
        super().__init__()
        weight = embedding.weight.detach()
        vocab = weight.shape[0]
        used = used.to(device=weight.device, dtype=torch.long)
        if used.numel() == 0 or int(used.min()) < 0 or int(used.max()) >= vocab:
            raise ValueError(f"used token ids must lie in [0, {vocab}), got {used.tolist()[:8]}")
        self.used = used
        self.rows = nn.Parameter(weight[used].clone())
        # Plain tensors, not buffers: DDP would broadcast buffers every step.
        self.unused = weight.clone()  # the used rows in here are stale; ``rows`` holds them
        self.position = torch.full((vocab,), len(used), dtype=torch.long, device=weight.device)
        self.position[used] = torch.arange(len(used), device=weight.device)

    @property
    def num_embeddings(self) -> int:
        return self.unused.shape[0]

    @property
    def weight(self) -> Tensor:
        """The whole (vocab, width) table, detached."""
        table = self.unused.clone()
        table[self.used] = self.rows.detach()
        return table

    def forward(self, ids: Tensor) -> Tensor:
        try:
            return F.embedding(self.position[ids], self.rows)
        except IndexError as e:  # an id outside ``used`` maps past the last row
            missing = sorted(set(ids.unique().tolist()) - set(self.used.tolist()))
            raise ValueError(
                f"token ids {missing[:10]} are not among the {len(self.used)} rows that "
                "train.token_rows 'used' found in the training captions"
            ) from e

    @torch.no_grad()
    def decay_unused(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step of the rows outside ``used``: AdamW's decoupled weight decay at
        the step's learning rate (call after ``optimizer.step()``, before the LR schedule
        moves on)."""
        for group in optimizer.param_groups:
            if any(p is self.rows for p in group["params"]):
                if group["weight_decay"]:
                    self.unused.mul_(1 - group["lr"] * group["weight_decay"])
                return
        raise ValueError("the optimizer does not hold the token embedding's rows")

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        table = state_dict[key]
        if table.shape != self.unused.shape:
            error_msgs.append(
                f"size mismatch for {key}: copying a param with shape {tuple(table.shape)}, "
                f"the model's is {tuple(self.unused.shape)}"
            )
            return
        with torch.no_grad():
            self.unused.copy_(table)
            self.rows.copy_(table[self.used])


def use_token_rows(model: nn.Module, used: Tensor) -> UsedTokenRows:
    """Swap ``model.token_embedding`` for a ``UsedTokenRows`` over ``used``; returns it."""
    embedding = model.token_embedding
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"model.token_embedding is a {type(embedding).__name__}, not nn.Embedding")
    rows = UsedTokenRows(embedding, used)
    model.token_embedding = rows
    return rows
