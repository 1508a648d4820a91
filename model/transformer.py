"""Pre-LN transformer blocks shared by the image and text towers.

Parameter names and shapes follow OpenCLIP's ``ResidualAttentionBlock`` (which wraps
``nn.MultiheadAttention``), so state dicts move between the two unchanged:
``ln_1``, ``attn.in_proj_weight`` (3W, W), ``attn.in_proj_bias``, ``attn.out_proj``, ``ls_1``,
``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``ls_2``. Attention runs through
``F.scaled_dot_product_attention``.

Both towers read only one token of the last block's output (the class token, the end-of-text
token), so the last block can run its query, attention output and MLP for that one token
alone (``Transformer.forward_pooled``). That is the same function, a fraction of the work.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU, used by their original checkpoints."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel residual scale; parameter named ``gamma`` as in OpenCLIP."""

    def __init__(self, width: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class MLP(nn.Module):
    """Two linear layers with a GELU between, widening to ``hidden``."""

    def __init__(self, width: int, hidden: int, quick_gelu: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a fused input projection (``nn.MultiheadAttention``'s
    parameter layout: q, k, v stacked in ``in_proj_weight``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, W = x.shape
        return x.view(B, T, self.heads, W // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: Tensor, is_causal: bool = False) -> Tensor:
        B, T, W = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3W)
        q, k, v = (self._split_heads(t) for t in qkv.split(W, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, W))

    def forward_one_query(self, x: Tensor, index: Tensor, causal: bool) -> Tensor:
        """Attention output at one position per row: x (B, T, W), index (B,) -> (B, 1, W).

        With ``causal`` the query at ``index[b]`` sees keys ``0..index[b]`` only, exactly as
        that row of full causal attention would.
        """
        B, T, W = x.shape
        rows = torch.arange(B, device=x.device)
        q = F.linear(x[rows, index], self.in_proj_weight[:W], self.in_proj_bias[:W])  # (B, W)
        kv = F.linear(x, self.in_proj_weight[W:], self.in_proj_bias[W:])  # (B, T, 2W)
        k, v = (self._split_heads(t) for t in kv.split(W, dim=-1))
        q = q.view(B, self.heads, 1, W // self.heads)  # (B, nh, 1, hs)
        mask = None
        if causal:
            positions = torch.arange(T, device=x.device)
            mask = (positions[None, :] <= index[:, None]).view(B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, 1, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, 1, W))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); each branch optionally layer-scaled."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        ls_init_value: float | None,
        quick_gelu: bool,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ls_1: nn.Module = (
            LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        )
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden, quick_gelu)
        self.ls_2: nn.Module = (
            LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        )

    def forward(self, x: Tensor, is_causal: bool = False) -> Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), is_causal=is_causal))
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    def forward_one_token(self, x: Tensor, index: Tensor, causal: bool) -> Tensor:
        """The block's output at ``index[b]`` of each row only: (B, T, W) -> (B, W)."""
        rows = torch.arange(x.shape[0], device=x.device)
        attn = self.attn.forward_one_query(self.ln_1(x), index, causal)[:, 0]  # (B, W)
        y = x[rows, index] + self.ls_1(attn)
        return y + self.ls_2(self.mlp(self.ln_2(y)))


class Transformer(nn.Module):
    """A stack of ``layers`` blocks in ``resblocks`` (OpenCLIP's name)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = None,
        quick_gelu: bool = False,
    ) -> None:
        super().__init__()
        self.width = width
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, ls_init_value, quick_gelu)
            for _ in range(layers)
        )

    @property
    def blocks(self) -> list[ResidualAttentionBlock]:
        return [cast(ResidualAttentionBlock, b) for b in self.resblocks]

    def _run(self, block: ResidualAttentionBlock, x: Tensor, is_causal: bool) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            out: Tensor = checkpoint(block, x, is_causal, use_reentrant=False)
            return out
        return block(x, is_causal=is_causal)

    def forward(self, x: Tensor, is_causal: bool = False) -> Tensor:
        """Every token through every block: (B, T, W) -> (B, T, W)."""
        for block in self.blocks:
            x = self._run(block, x, is_causal)
        return x

    def forward_pooled(self, x: Tensor, index: Tensor, is_causal: bool = False) -> Tensor:
        """The last block's output at ``index[b]`` of each row: (B, T, W) -> (B, W)."""
        *body, last = self.blocks
        for block in body:
            x = self._run(block, x, is_causal)
        return last.forward_one_token(x, index, is_causal)
