"""The training loop on the tiny modified-ResNet CLIP: 2 ranks under torchrun (gloo on CPU),
BatchNorm in training mode under DDP, and the checkpoint loads strictly into OpenCLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.conftest import finish, read_metrics, torchrun, write_run_config

pytestmark = pytest.mark.timeout(400)
STEPS = 24


def test_two_ranks_train_the_tiny_resnet_and_open_clip_loads_the_checkpoint(
    fashion_shards: Path, tmp_path: Path
) -> None:
    import open_clip

    from model import create_model, get_tokenizer, load_checkpoint
    from model.config import CONFIG_DIR

    config = write_run_config(tmp_path, fashion_shards, model="clipflow-tiny-rn")
    proc = torchrun(config)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    records = read_metrics(tmp_path / "train")
    assert records[-1]["step"] == STEPS
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < first - 0.3, f"loss did not decrease: {first:.3f} -> {last:.3f}"

    latest = tmp_path / "train" / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)["state_dict"]
    # The norms trained with batch statistics; DDP keeps rank 0's running statistics.
    assert state["visual.layer1.0.bn1.num_batches_tracked"].item() == STEPS
    assert state["visual.layer4.0.bn3.weight"].abs().sum() > 0  # moved off its zero init
    ours = create_model("clipflow-tiny-rn").eval()
    extra = load_checkpoint(ours, latest)
    assert create_model(extra["model_config"]).config == ours.config
    open_clip.add_model_config(CONFIG_DIR / "clipflow-tiny-rn.json")
    theirs = open_clip.create_model("clipflow-tiny-rn").eval()
    theirs.load_state_dict(state, strict=True)
    images = torch.randn(4, 3, 64, 64)
    texts = get_tokenizer("clipflow-tiny-rn")(["a photo of a bag", "a sneaker", "a coat", "x"])
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(images), theirs.encode_image(images), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            ours.encode_text(texts), theirs.encode_text(texts), atol=1e-5, rtol=0
        )
