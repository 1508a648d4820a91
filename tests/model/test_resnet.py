"""The modified-ResNet CLIP against OpenCLIP as the reference: configs, initialisation, weights
both ways, and outputs in eval mode (running BatchNorm statistics) and in training mode (batch
statistics, and the running statistics that step leaves behind)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from model import (
    CLIP,
    ResNetConfig,
    create_model,
    get_model_config,
    get_tokenizer,
    list_models,
    load_checkpoint,
)
from model.config import CONFIG_DIR

TOL = 1e-5
CAPTIONS = ["a photo of a cat", "", "an oil painting of a lighthouse at dusk", "dog"]


@pytest.fixture(scope="module", autouse=True)
def _register_configs() -> None:
    open_clip.add_model_config(CONFIG_DIR / "clipflow-tiny-rn.json")


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """BatchNorm affine parameters and running statistics away from their fresh values (ones,
    zeros, and bn3's zero gain, which would make every residual branch vanish), so a test
    sees every tensor of the checkpoint at work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, what
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"{what}: max abs diff {diff:.2e}"


def _assert_same_outputs(ours: CLIP, ref: torch.nn.Module, name: str, batch: int) -> None:
    """Image and text embeddings agree in eval mode, then in one training-mode forward
    (batch statistics), after which the running statistics agree too."""
    size = ours.config.vision.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = get_tokenizer(context_length=ours.context_length)(CAPTIONS)
    for training in (False, True):
        ours.train(training)
        ref.train(training)
        with torch.no_grad():
            ours_img, ref_img = ours.encode_image(images), ref.encode_image(images)
            ours_txt, ref_txt = ours.encode_text(text), ref.encode_text(text)
        mode = "train" if training else "eval"
        _assert_close(ours_img, ref_img, f"{name} {mode} image features")
        _assert_close(F.normalize(ours_img, dim=-1), F.normalize(ref_img, dim=-1), "unit image")
        _assert_close(ours_txt, ref_txt, f"{name} {mode} text features")
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    for key in ours_state:
        if "running_" in key:
            _assert_close(ours_state[key], ref_state[key], f"{name} {key} after a train step")


@pytest.mark.parametrize("name", ["clipflow-tiny-rn", "RN50"])
def test_one_seed_builds_open_clips_weights(name: str) -> None:
    """Same construction order and initialisation as OpenCLIP (ModifiedResNet's
    init_parameters included): one seed gives bit-identical models."""
    torch.manual_seed(7)
    ours = create_model(name).state_dict()
    torch.manual_seed(7)
    ref = open_clip.create_model(name).state_dict()
    assert ours.keys() == ref.keys()
    for key, value in ours.items():
        assert torch.equal(value, ref[key]), key
    assert not ours["visual.layer1.0.bn3.weight"].any()  # residual branches start at zero


@pytest.mark.parametrize(("name", "batch"), [("clipflow-tiny-rn", 4), ("RN50", 2)])
def test_resnet_weights_move_both_ways_with_the_same_outputs(
    name: str, batch: int, tmp_path
) -> None:
    torch.manual_seed(1)
    ref = open_clip.create_model(name)
    ours = create_model(name)
    # OpenCLIP -> ours, strictly.
    _randomise_norms(ref, seed=2)
    load_checkpoint(ours, ref.state_dict())
    _assert_same_outputs(ours, ref, name, batch)
    # ours -> OpenCLIP, through OpenCLIP's own strict loader.
    _randomise_norms(ours, seed=3)
    path = tmp_path / "ours.pt"
    torch.save({"state_dict": ours.state_dict(), "model_config": ours.config.to_dict()}, path)
    open_clip.load_checkpoint(ref, str(path), strict=True)
    _assert_same_outputs(ours, ref, name, batch)


def test_shipped_resnet_configs_are_open_clip_configs(tmp_path) -> None:
    assert {"RN50", "RN101", "clipflow-tiny-rn"} <= set(list_models())
    for name in ("RN50", "RN101"):
        ours = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert ours == open_clip.get_model_config(name), name
        cfg = get_model_config(name)
        assert isinstance(cfg.vision, ResNetConfig)
        assert (cfg.vision.embed_dim, cfg.vision.heads, cfg.vision.grid_size) == (2048, 32, 7)
    assert get_model_config("RN101").vision.layers == (3, 4, 23, 3)
    tiny = get_model_config("clipflow-tiny-rn")
    assert isinstance(tiny.vision, ResNetConfig)
    assert (tiny.vision.image_size, tiny.vision.layers, tiny.vision.width) == (64, (1, 1, 1, 1), 16)
    assert (tiny.embed_dim, tiny.vision.heads, tiny.vision.grid_size) == (64, 8, 2)
    # A checkpoint's model_config builds the same model here and in OpenCLIP.
    saved = tiny.to_dict()
    assert get_model_config(json.loads(json.dumps(saved))) == tiny
    (tmp_path / "saved-rn.json").write_text(json.dumps(saved))
    open_clip.add_model_config(tmp_path / "saved-rn.json")
    ref_keys = open_clip.create_model("saved-rn").state_dict().keys()
    assert ref_keys == create_model(saved).state_dict().keys()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch_size": 16}, "patch_size does not apply"),
        ({"image_size": 28}, "multiple of 32"),
        ({"layers": [1, 1, 1]}, "4 block counts"),
        ({"head_width": 48}, "head_width"),
        ({"mlp_ratio": 4.0}, "unsupported keys.*mlp_ratio"),
    ],
)
def test_bad_resnet_configs_are_refused_by_name(change: dict, message: str) -> None:
    cfg = json.loads((CONFIG_DIR / "clipflow-tiny-rn.json").read_text())
    cfg["vision_cfg"].update(change)
    with pytest.raises(ValueError, match=f"vision_cfg.*{message}"):
        create_model(cfg)


def test_grad_checkpointing_leaves_the_resnet_alone_and_gives_the_same_gradients() -> None:
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    text = get_tokenizer(context_length=32)(CAPTIONS)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(5)
        model = create_model("clipflow-tiny-rn", grad_checkpointing=checkpointing)
        img, txt, scale = model(images, text)
        (scale * img @ txt.T).logsumexp(dim=1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        assert model.transformer.grad_checkpointing == checkpointing
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name
