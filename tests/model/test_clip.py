"""The CLIP model against OpenCLIP as the reference: weights move both ways, outputs agree."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model import (
    CLIP,
    create_model,
    get_model_config,
    get_tokenizer,
    image_transform,
    list_models,
    load_checkpoint,
)
from model.clip import clamp_logit_scale
from model.config import CONFIG_DIR

TOL = 1e-5
CAPTIONS = [
    "a photo of a cat",
    "",
    "a diagram of two dogs playing chess on a very long table " * 6,  # truncated at context
    "Zürich 東京 😀 &amp; it's",
    "dog",
    "an oil painting of a lighthouse at dusk",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    "a",
    "the quick brown fox jumps over the lazy dog, twice",
    "close-up photo of a red apple on a wooden table",
]


@pytest.fixture(scope="module", autouse=True)
def _register_configs(tmp_path_factory) -> None:
    # OpenCLIP learns our names (clipflow-tiny and variants) from our JSON files.
    for path in CONFIG_DIR.glob("*.json"):
        open_clip.add_model_config(path)
    variants = tmp_path_factory.mktemp("configs")
    tiny = json.loads((CONFIG_DIR / "clipflow-tiny.json").read_text())
    tiny["quick_gelu"] = True
    tiny["vision_cfg"]["ls_init_value"] = 0.1
    tiny["text_cfg"]["ls_init_value"] = 0.1
    (variants / "clipflow-tiny-quickgelu-ls.json").write_text(json.dumps(tiny))
    open_clip.add_model_config(variants / "clipflow-tiny-quickgelu-ls.json")


TINY_VARIANTS = ["clipflow-tiny", "clipflow-tiny-p7", "clipflow-tiny-quickgelu-ls"]


def _inputs(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = open_clip.get_model_config(name)
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    text = get_tokenizer(context_length=cfg["text_cfg"]["context_length"])(CAPTIONS)
    return images, text


def _assert_same_outputs(ours: CLIP, ref: torch.nn.Module, name: str) -> None:
    images, text = _inputs(name)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        # One pass per tower and model: ViT-B-32 on a shared 2-core CPU is slow.
        ours_img, ours_txt = ours.encode_image(images), ours.encode_text(text)
        ref_img, ref_txt = ref.encode_image(images), ref.encode_text(text)
        ours_scale, ref_scale = ours(None, None)[2], ref.logit_scale.exp()
    ours_unit, ref_unit = F.normalize(ours_txt, dim=-1), F.normalize(ref_txt, dim=-1)
    pairs = {
        "image features": (ours_img, ref_img),
        "text features": (ours_txt, ref_txt),
        "unit image embeddings": (F.normalize(ours_img, dim=-1), F.normalize(ref_img, dim=-1)),
        "unit text embeddings": (ours_unit, ref_unit),
        "logits": (
            ours_scale * F.normalize(ours_img, dim=-1) @ ours_unit.T,
            ref_scale * F.normalize(ref_img, dim=-1) @ ref_unit.T,
        ),
    }
    for what, (a, b) in pairs.items():
        assert a.shape == b.shape, what
        diff = (a - b).abs().max().item()
        assert diff <= TOL, f"{name} {what}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("name", TINY_VARIANTS)
def test_open_clip_weights_load_strictly_and_give_the_same_outputs(name: str) -> None:
    torch.manual_seed(1)
    ref = open_clip.create_model(name)
    ours = create_model(open_clip.get_model_config(name))
    load_checkpoint(ours, ref.state_dict())
    _assert_same_outputs(ours, ref, name)


@pytest.mark.parametrize("name", TINY_VARIANTS)
def test_our_checkpoint_loads_into_open_clip_create_model(name: str, tmp_path) -> None:
    torch.manual_seed(2)
    ours = create_model(open_clip.get_model_config(name))
    path = tmp_path / "epoch_1.pt"
    config = ours.config.to_dict()
    torch.save({"state_dict": ours.state_dict(), "model_config": config, "epoch": 1}, path)
    ref = open_clip.create_model(name, pretrained=str(path))
    assert ref.state_dict().keys() == ours.state_dict().keys()
    _assert_same_outputs(ours, ref, name)


def test_vit_b_32_weights_move_both_ways(tmp_path) -> None:
    # Two models only (ViT-B-32 is slow to build here): each direction reuses them.
    torch.manual_seed(3)
    ref = open_clip.create_model("ViT-B-32")
    ours = create_model("ViT-B-32")
    ours_path = tmp_path / "ours.pt"
    torch.save({"state_dict": ours.state_dict(), "model_config": ours.config.to_dict()}, ours_path)
    # OpenCLIP -> ours, as OpenAI-style plain state dict with its metadata entries.
    openai_style = dict(ref.state_dict(), input_resolution=torch.tensor(224))
    load_checkpoint(ours, openai_style)
    _assert_same_outputs(ours, ref, "ViT-B-32")
    # ours -> OpenCLIP, through OpenCLIP's own strict loader.
    open_clip.load_checkpoint(ref, str(ours_path), strict=True)
    load_checkpoint(ours, ours_path)
    _assert_same_outputs(ours, ref, "ViT-B-32")


def test_forward_returns_unit_embeddings_and_scale() -> None:
    model = create_model("clipflow-tiny").eval()
    images, text = _inputs("clipflow-tiny")
    with torch.no_grad():
        img, txt, scale = model(images, text)
        assert torch.allclose(img, F.normalize(model.encode_image(images), dim=-1), atol=1e-6)
        assert torch.allclose(txt, model.encode_text(text, normalize=True), atol=1e-6)
    assert img.norm(dim=-1).sub(1).abs().max() < 1e-5
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_shipped_configs_are_open_clip_configs() -> None:
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14", "clipflow-tiny"} <= set(list_models())
    for name in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
        ours = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert ours == open_clip.get_model_config(name), name
    tiny = get_model_config("clipflow-tiny")
    assert (tiny.embed_dim, tiny.vision.width, tiny.vision.layers, tiny.vision.heads) == (
        64,
        64,
        3,
        2,
    )
    assert (tiny.vision.image_size, tiny.vision.patch_size) == (28, 4)
    assert (tiny.text.width, tiny.text.layers, tiny.text.heads) == (64, 3, 2)
    assert (tiny.text.context_length, tiny.text.vocab_size) == (32, 49408)


def test_create_model_accepts_name_path_and_dict(tmp_path) -> None:
    path = tmp_path / "mine.json"
    path.write_text((CONFIG_DIR / "clipflow-tiny.json").read_text())
    by_name = create_model("clipflow-tiny")
    assert create_model(path).config == by_name.config
    assert create_model(by_name.config.to_dict()).config == by_name.config
    assert abs(by_name.logit_scale.item() - math.log(1 / 0.07)) < 1e-6


def test_bad_configs_are_refused_by_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="no-such-model"):
        create_model("no-such-model")
    cfg = json.loads((CONFIG_DIR / "clipflow-tiny.json").read_text())
    cfg["vision_cfg"]["timm_model_name"] = "resnet50"
    with pytest.raises(ValueError, match="vision_cfg.*timm_model_name"):
        create_model(cfg)
    cfg = json.loads((CONFIG_DIR / "clipflow-tiny.json").read_text())
    cfg["vision_cfg"]["patch_size"] = 5
    with pytest.raises(ValueError, match="patch_size"):
        create_model(cfg)


def test_temperature_has_a_gradient_at_the_cap_and_can_come_back_down() -> None:
    """As OpenCLIP: forward returns exp(logit_scale) unclamped, so at the cap (100) a loss
    that wants a lower temperature still moves it; the parameter is clamped after the step."""
    model = create_model("clipflow-tiny")
    images, text = _inputs("clipflow-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))
    scale = model(images, text)[2]
    assert scale.item() == pytest.approx(100.0, rel=1e-5)
    scale.backward()  # a loss that wants a lower scale
    assert model.logit_scale.grad is not None and model.logit_scale.grad.item() > 0
    optimizer = torch.optim.AdamW([model.logit_scale], lr=1e-2, weight_decay=0.0)
    for _ in range(5):
        optimizer.zero_grad()
        model(images, text)[2].backward()
        optimizer.step()
        clamp_logit_scale(model)
    assert model.logit_scale.item() < math.log(100) - 0.04
    for _ in range(20):  # a loss that wants a higher scale stops at the cap
        optimizer.zero_grad()
        (-model(images, text)[2]).backward()
        optimizer.step()
        clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    images, text = _inputs("clipflow-tiny")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        model = create_model("clipflow-tiny", grad_checkpointing=checkpointing)
        img, txt, scale = model(images, text)
        (scale * img @ txt.T).logsumexp(dim=1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 30
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_too_long_text_is_refused() -> None:
    model = create_model("clipflow-tiny")
    with pytest.raises(ValueError, match="context_length 32"):
        model.encode_text(torch.ones(1, 40, dtype=torch.long))


def test_bf16_autocast_runs_and_stays_close() -> None:
    model = create_model("clipflow-tiny")
    images, text = _inputs("clipflow-tiny")
    with torch.no_grad():
        full = model.encode_text(text, normalize=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.encode_text(text, normalize=True)
    assert (full - half.float()).abs().max() < 0.05


@pytest.mark.parametrize("is_train", [False, True])
def test_image_transform_matches_open_clip(is_train: bool) -> None:
    image = Image.fromarray(
        torch.randint(0, 255, (37, 53, 4), dtype=torch.uint8).numpy(), mode="RGBA"
    )
    ours = image_transform(28, is_train=is_train)
    ref = open_clip.image_transform(28, is_train=is_train)
    torch.manual_seed(4)
    a = ours(image)
    torch.manual_seed(4)
    b = ref(image)
    assert a.shape == (3, 28, 28)
    assert torch.equal(a, b)
    gray = image_transform(28, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3)(image.convert("L"))
    assert gray.shape == (3, 28, 28) and gray.min() >= -1 and gray.max() <= 1


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "1"])
def test_eval_transform_matches_open_clip_at_every_size(mode: str) -> None:
    """EvalTransform resizes, crops and normalises without torchvision: the tensor is
    OpenCLIP's (torchvision's Compose) bit for bit, whatever the image's mode and size
    (already the model's, smaller, larger, portrait, landscape, odd margins)."""
    generator = torch.Generator().manual_seed(0)
    ours = image_transform(28, is_train=False)
    ref = open_clip.image_transform(28, is_train=False)
    for width, height in [(28, 28), (27, 28), (28, 27), (53, 37), (37, 53), (64, 64), (100, 30),
                          (29, 101), (13, 9)]:  # fmt: skip
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        image = Image.fromarray(pixels.numpy(), mode="RGB").convert(mode)
        assert torch.equal(ours(image), ref(image)), (mode, width, height)
