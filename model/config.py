"""Architecture configs: OpenCLIP's JSON format (``model/configs/*.json``) read into dataclasses.

A config file looks like OpenCLIP's own ``ViT-B-32.json``::

    {"embed_dim": 512,
     "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                  "layers": 12}}

so ``open_clip.add_model_config`` accepts the same files. As in OpenCLIP, a ``vision_cfg``
whose ``layers`` is a list of four block counts is the CLIP paper's modified ResNet
(``RN50.json``); any other is a ViT. Keys this package does not implement (timm towers,
attentional pooling, HF text towers, ...) are refused by name rather than silently ignored,
because ignoring them would build a different model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class VisionConfig:
    """ViT image tower: ``image_size`` and ``patch_size`` in pixels."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ResNetConfig:
    """Modified-ResNet image tower (``model/resnet.py``): ``layers`` bottleneck blocks in each
    of four stages; ``width`` channels after the stem and 32x that into the attention pool
    (stages 2-4 each double the width, and a bottleneck expands it 4x), which has
    ``width * 32 // head_width`` heads."""

    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    head_width: int = 64

    @property
    def embed_dim(self) -> int:
        """Channels of the last stage: the attention pool's width."""
        return self.width * 32

    @property
    def heads(self) -> int:
        return self.embed_dim // self.head_width

    @property
    def grid_size(self) -> int:
        """Side of the last stage's feature map: the stem and stages 2-4 halve it."""
        return self.image_size // 32


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer over BPE ids; pooled at the end-of-text (highest) id."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A whole CLIP: two towers projected into a shared ``embed_dim`` space."""

    embed_dim: int = 512
    vision: VisionConfig | ResNetConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config in OpenCLIP's JSON layout (``vision_cfg`` / ``text_cfg``)."""
        out: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "vision_cfg": _plain(dataclasses.asdict(self.vision)),
            "text_cfg": dataclasses.asdict(self.text),
            "quick_gelu": self.quick_gelu,
            "init_logit_scale": self.init_logit_scale,
        }
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        return out

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], source: str = "config") -> ModelConfig:
        """Parse an OpenCLIP-format dict; ``source`` names the input in error messages."""
        cfg = dict(cfg)
        top_level = _field_names(cls) - {"vision", "text"} | {"vision_cfg", "text_cfg"}
        _refuse_unknown(cfg, top_level, source)
        vision = _vision_section(dict(cfg.pop("vision_cfg", {})), f"{source}: vision_cfg")
        text = _section(TextConfig, cfg.pop("text_cfg", {}), f"{source}: text_cfg")
        if text.width % text.heads:
            raise ValueError(f"{source}: text_cfg width must be a multiple of heads, got {text}")
        return cls(vision=vision, text=text, **cfg)


def _plain(section: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, as they read back from JSON (a ResNet's ``layers``)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _refuse_unknown(cfg: dict[str, Any], allowed: set[str], source: str) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{source}: unsupported keys {unknown} (supported: {sorted(allowed)})")


def _section(cls: Any, cfg: dict[str, Any], source: str) -> Any:
    _refuse_unknown(cfg, _field_names(cls), source)
    return cls(**cfg)


def _vision_section(cfg: dict[str, Any], source: str) -> VisionConfig | ResNetConfig:
    """The ViT or, when ``layers`` is a list (OpenCLIP's rule), the ResNet tower's config."""
    if not isinstance(cfg.get("layers"), list | tuple):
        vit: VisionConfig = _section(VisionConfig, cfg, source)
        if vit.image_size % vit.patch_size or vit.width % vit.head_width:
            raise ValueError(
                f"{source}: image_size must be a multiple of patch_size and width a multiple "
                f"of head_width, got {vit}"
            )
        return vit
    # OpenCLIP's RN*.json files carry "patch_size": null, which its ResNet ignores.
    if cfg.pop("patch_size", None) is not None:
        raise ValueError(f"{source}: patch_size does not apply to a ResNet (layers is a list)")
    layers = cfg["layers"] = tuple(cfg["layers"])
    resnet: ResNetConfig = _section(ResNetConfig, cfg, source)
    if len(layers) != 4 or not all(isinstance(n, int) and n > 0 for n in layers):
        raise ValueError(f"{source}: a ResNet's layers must be 4 block counts > 0, got {layers}")
    if resnet.image_size % 32 or resnet.image_size < 32:
        raise ValueError(
            f"{source}: a ResNet's image_size must be a multiple of 32 (it downsamples by 32), "
            f"got {resnet.image_size}"
        )
    if resnet.width % 2 or resnet.embed_dim % resnet.head_width:
        raise ValueError(
            f"{source}: a ResNet's width must be even and width * 32 a multiple of head_width, "
            f"got {resnet}"
        )
    return resnet


def list_models() -> list[str]:
    """Names of the architectures shipped in ``model/configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_model_config(name_or_path: str | Path | dict[str, Any] | ModelConfig) -> ModelConfig:
    """Resolve a config name (``"ViT-B-32"``), a JSON path, or an OpenCLIP-format dict."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    if isinstance(name_or_path, dict):
        return ModelConfig.from_dict(name_or_path)
    path = Path(name_or_path)
    if path.suffix != ".json" or not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise ValueError(
            f"unknown model config {str(name_or_path)!r}: not a JSON file and not one of "
            f"{list_models()}"
        )
    return ModelConfig.from_dict(json.loads(path.read_text()), source=str(path))
