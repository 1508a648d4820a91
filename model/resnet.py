"""The CLIP paper's modified ResNet image tower (Radford et al., 2021, section 2.4).

Three changes from a torchvision ResNet:
- a stem of three 3x3 convolutions (the first with stride 2) and an average pool, instead of
  one 7x7 convolution and a max pool;
- anti-aliased strided convolutions: where a block downsamples, its convolutions all have
  stride 1 and an average pool does the striding (after the 3x3 convolution, and before the
  1x1 convolution of the shortcut);
- attention pooling instead of global average pooling: the mean of the last feature map
  queries the map (plus a learned positional embedding) in one multi-head attention layer.

Parameter and buffer names, shapes, construction order and initialisation are OpenCLIP's
``ModifiedResNet``, so state dicts move between the two unchanged and one seed gives both the
same weights. Only the pooled (mean) token's query and output projection are computed: the
same function as OpenCLIP's full attention followed by ``x[0]``, with a fraction of its work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ResNetConfig


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, (average pool when strided), 1x1 expand by 4, plus the shortcut:
    (B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.stride = stride
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        # OpenCLIP keeps the shortcut's average pool in this Sequential as "-1", which has no
        # parameters; forward applies it, so the conv and norm keep their names "0" and "1".
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, bias=False), nn.BatchNorm2d(out)
            )

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.stride) if self.stride > 1 else x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(self._pool(out)))
        identity = x if self.downsample is None else self.downsample(self._pool(x))
        return F.relu(out + identity, inplace=True)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the feature map's mean over the map and itself:
    (B, C, g, g) -> (B, output_dim). ``positional_embedding`` has g*g + 1 rows, mean first."""

    def __init__(self, grid_size: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid_size**2 + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1+g*g, C)
        x = x + self.positional_embedding.to(x.dtype)
        q = self._split_heads(self.q_proj(x[:, :1]))  # (B, nh, 1, hs): the mean token only
        k, v = self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    """Stem, four stages of bottlenecks, attention pool: images (B, 3, S, S) -> (B, output_dim).

    Each stage but the first halves the map and doubles the channels; with the stem's two
    halvings the last map is S/32 on a side with ``cfg.width * 32`` channels.
    """

    def __init__(self, cfg: ResNetConfig, output_dim: int) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.output_dim = output_dim
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        inplanes = width
        stages = []
        for i, blocks in enumerate(cfg.layers):
            planes = width * 2**i
            stages.append(_stage(inplanes, planes, blocks, stride=1 if i == 0 else 2))
            inplanes = planes * Bottleneck.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(cfg.grid_size, cfg.embed_dim, cfg.heads, output_dim)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # OpenCLIP's (and OpenAI's): the attention pool's projections ~ N(0, 1/width), and
        # each block's last norm starts at zero, so every residual block starts as identity.
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj):
            nn.init.normal_(proj.weight, std=std)
        nn.init.normal_(self.attnpool.c_proj.weight, std=std)
        for block in self.blocks:
            nn.init.zeros_(block.bn3.weight)

    @property
    def blocks(self) -> list[Bottleneck]:
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [block for stage in stages for block in stage if isinstance(block, Bottleneck)]

    def stem(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, width, S/4, S/4)."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (B, width/2, S/2, S/2)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = F.relu(self.bn3(self.conv3(x)), inplace=True)  # (B, width, S/2, S/2)
        return F.avg_pool2d(x, 2)

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32 * width, S/32, S/32)
        return self.attnpool(x)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` bottlenecks; the first changes the width and (with ``stride``) the size."""
    layers = [Bottleneck(inplanes, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
