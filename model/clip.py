"""CLIP (Radford et al., 2021): a ViT or modified-ResNet image tower and a causal text
transformer, each projected into one embedding space, compared by a learned temperature.

Parameter names and shapes are OpenCLIP's ``CLIP`` with a ViT or ``ModifiedResNet`` tower, so
OpenAI / OpenCLIP checkpoints load with ``strict=True`` and ours load into
``open_clip.create_model``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig, ResNetConfig, VisionConfig, get_model_config
from model.resnet import ModifiedResNet
from model.transformer import Transformer

log = logging.getLogger(__name__)

# The temperature's cap, as OpenCLIP: training clamps the parameter after each optimizer step
# (``clamp_logit_scale``); the forward pass never clamps, since clamp's gradient at its bound
# is 0 and would freeze the temperature there.
MAX_LOGIT_SCALE = math.log(100)
# Text rows are encoded in this many groups of similar length (see CLIP.encode_text): more
# groups trim more padding but make smaller matrix products.
TEXT_LENGTH_GROUPS = 4


class VisionTransformer(nn.Module):
    """Patch embedding, class token, positional embedding, pre-LN transformer, final LN,
    projection of the class token: images (B, 3, H, W) -> features (B, output_dim)."""

    def __init__(self, cfg: VisionConfig, output_dim: int, quick_gelu: bool = False) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        scale = cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(cfg.grid_size**2 + 1, cfg.width)
        )
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.ls_init_value, quick_gelu
        )
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, output_dim))

    def forward(self, images: Tensor) -> Tensor:
        B = images.shape[0]
        x = self.conv1(images)  # (B, W, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, W)
        cls = self.class_embedding.to(x.dtype).expand(B, 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+g*g, W)
        x = self.ln_pre(x)
        # Only the class token (position 0) is pooled, so the last block computes it alone.
        first = torch.zeros(B, dtype=torch.long, device=x.device)
        x = self.transformer.forward_pooled(x, first)  # (B, W)
        return self.ln_post(x) @ self.proj


class CLIP(nn.Module):
    """Image and text towers plus the learned temperature ``logit_scale`` (log-space)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual: VisionTransformer | ModifiedResNet = (
            ModifiedResNet(cfg.vision, cfg.embed_dim)
            if isinstance(cfg.vision, ResNetConfig)
            else VisionTransformer(cfg.vision, cfg.embed_dim, cfg.quick_gelu)
        )
        # The text tower lives at the top level, under OpenCLIP's names.
        text = cfg.text
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.transformer = Transformer(
            text.width, text.layers, text.heads, text.mlp_ratio, text.ls_init_value, cfg.quick_gelu
        )
        self.ln_final = nn.LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        self.logit_bias = (
            nn.Parameter(torch.tensor(cfg.init_logit_bias))
            if cfg.init_logit_bias is not None
            else None
        )
        self._init_text_weights()

    def _init_text_weights(self) -> None:
        # OpenAI's initialisation: residual branches scaled down with depth.
        width, layers = self.config.text.width, self.config.text.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=attn_std)

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in the backward pass instead of storing its
        activations. A ResNet image tower is not recomputed (as in OpenCLIP): recomputing a
        BatchNorm in training mode would update its running statistics twice."""
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W), normalised pixels -> (B, embed_dim)."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:
        """Token ids (B, T<=context_length) -> (B, embed_dim), pooled at the end-of-text id."""
        if text.shape[1] > self.context_length:
            raise ValueError(
                f"text has {text.shape[1]} tokens, more than context_length {self.context_length}"
            )
        if text.shape[0] == 0:
            return text.new_zeros((0, self.config.embed_dim), dtype=self.text_projection.dtype)
        # The end-of-text id is the largest in the vocabulary, so argmax finds it.
        eot = text.argmax(dim=-1)  # (B,)
        # Causal attention: tokens after a row's end-of-text cannot change its pooled feature.
        # Rows are grouped by length and each group's padded tail is cut off, so the
        # transformer runs on about the mean caption length instead of the longest.
        # One embedding lookup for the whole batch, not one per group: each lookup's backward
        # writes a dense (vocab, width) gradient, which the groups' lookups then add up. On
        # the CPU one lookup made a clipflow-tiny step 4% faster (one rank, batch 128) and
        # 11% faster with patch 7 (two DDP ranks of 64).
        order = eot.argsort()
        groups = order.chunk(TEXT_LENGTH_GROUPS)
        lengths = (torch.stack([eot[rows[-1]] for rows in groups]) + 1).tolist()  # one sync
        longest = max(lengths)
        embedded = self.token_embedding(text[:, :longest]) + self.positional_embedding[:longest]
        pooled = []
        for rows, T in zip(groups, lengths, strict=True):
            x = embedded[rows, :T]  # (b, T, W)
            pooled.append(self.transformer.forward_pooled(x, eot[rows], is_causal=True))
        x = torch.cat(pooled)[order.argsort()]  # (B, W), back in input order
        x = self.ln_final(x) @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: Tensor | None = None, text: Tensor | None = None
    ) -> tuple[Tensor | None, ...]:
        """Unit image and text features and ``exp(logit_scale)`` (plus ``logit_bias`` when the
        config has one), as OpenCLIP's ``CLIP.forward`` returns them."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale = self.logit_scale.exp()
        if self.logit_bias is not None:
            return image_features, text_features, scale, self.logit_bias
        return image_features, text_features, scale


@torch.no_grad()
def clamp_logit_scale(model: CLIP) -> None:
    """Keep the temperature in [1, 100] (log space [0, ln 100]); call after each optimizer step."""
    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def create_model(
    name: str | Path | dict[str, Any] | ModelConfig,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    grad_checkpointing: bool = False,
) -> CLIP:
    """A randomly initialised CLIP from a config name, JSON path or OpenCLIP-format dict.

    ``pretrained`` is an optional checkpoint (ours, OpenCLIP's or OpenAI's state dict) loaded
    with strict key and shape checks.
    """
    cfg = get_model_config(name)
    model = CLIP(cfg)
    if pretrained is not None:
        from model.checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    model.set_grad_checkpointing(grad_checkpointing)
    log.info(
        "created CLIP %s: %.1fM parameters",
        name if isinstance(name, str | Path) else "from config",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model.to(device)
