"""Checkpoint loading: ours, OpenCLIP's and OpenAI's ViT state dicts, with strict checks.

Accepted layouts (all read with ``torch.load(weights_only=True)``):
- ours: ``{"state_dict": {...}, "model_config": {...}, ...}`` as the training loop writes it;
- OpenCLIP's training checkpoints: ``{"state_dict": {"module.visual.conv1.weight": ...}, ...}``;
- plain state dicts (OpenCLIP ``model.state_dict()``, OpenAI's converted weights, which also
  carry ``input_resolution``, ``context_length`` and ``vocab_size`` entries).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Entries of OpenAI's state dicts that describe the architecture rather than hold weights.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file (local path or fsspec URI) as tensors only."""
    with fsspec.open(str(path), "rb") as f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights of any accepted layout, without ``module.`` prefixes or metadata."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint 'state_dict' is a {type(state).__name__}, not a mapping")
    if state and all(k.startswith("module.") for k in state):
        # Saved from a DistributedDataParallel wrapper.
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in _OPENAI_METADATA_KEYS}


def load_checkpoint(
    model: nn.Module, checkpoint: str | Path | Mapping[str, Any], strict: bool = True
) -> dict[str, Any]:
    """Load weights into ``model``; returns the checkpoint's other entries (config, epoch, ...).

    With ``strict`` any missing or unexpected key, or any shape mismatch, raises a ValueError
    that names every offending key, and the model is left unchanged.
    """
    source = str(checkpoint) if isinstance(checkpoint, str | Path) else "state dict"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    state = extract_state_dict(raw)
    expected = model.state_dict()
    for key in ("logit_scale", "logit_bias"):
        # Some checkpoints store the temperature as shape (1,) rather than a scalar.
        if key in state and key in expected and state[key].numel() == expected[key].numel() == 1:
            state[key] = state[key].reshape(expected[key].shape)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        raise ValueError(f"{source} does not fit this architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)
    log.info("loaded %d tensors from %s", len(state), source)
    return {k: v for k, v in raw.items() if k != "state_dict"} if "state_dict" in raw else {}
