"""train.loss: siglip trains the model's logit_bias, over 2 gloo ranks under torchrun; a
logit bias with the CLIP loss (which would leave it untrained) is refused up front."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.config import CONFIG_DIR
from model.train_config import TrainConfig, resolve_model_config
from tests.train.conftest import finish, read_metrics, torchrun, write_run_config

pytestmark = pytest.mark.timeout(600)


def test_two_ranks_train_siglip_and_its_logit_bias(fashion_shards: Path, tmp_path: Path) -> None:
    config = write_run_config(
        tmp_path, fashion_shards, loss="siglip", init_logit_bias=-10.0,
        samples=12 * 64, checkpoint_every_steps=100, resume=None,
    )  # fmt: skip
    out = finish(torchrun(config))
    assert "done:" in out, out[-3000:]
    records = read_metrics(tmp_path / "train")
    assert [r["step"] for r in records] == list(range(2, 13, 2))
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < first - 0.5, f"loss did not fall: {first:.3f} -> {last:.3f}"
    checkpoint = torch.load(tmp_path / "train" / "checkpoints" / "latest.pt", weights_only=True)
    bias = checkpoint["state_dict"]["logit_bias"].item()
    assert bias > -10.0 + 1e-3, f"logit_bias did not move from -10: {bias}"
    assert records[-1]["logit_bias"] == pytest.approx(bias)
    assert checkpoint["model_config"]["init_logit_bias"] == -10.0
    assert math.exp(checkpoint["model_config"]["init_logit_scale"]) == pytest.approx(10.0)


def test_a_logit_bias_needs_the_siglip_loss(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.init_logit_bias .* train\.loss: siglip"):
        TrainConfig(init_logit_bias=-10.0)
    model = json.loads((CONFIG_DIR / "clipflow-tiny.json").read_text())
    path = tmp_path / "tiny-siglip.json"
    path.write_text(json.dumps({**model, "init_logit_bias": -10.0}))
    with pytest.raises(ValueError, match=r"has init_logit_bias -10.0 but train\.loss is 'clip'"):
        resolve_model_config(TrainConfig(model=str(path)))
    # The model config's own bias and scale are kept under the SigLIP loss.
    own = resolve_model_config(TrainConfig(model=str(path), loss="siglip"))
    assert own.init_logit_bias == -10.0 and own.init_logit_scale == pytest.approx(
        math.log(1 / 0.07)
    )
    plain = resolve_model_config(TrainConfig(loss="siglip"))  # OpenCLIP's --siglip init
    assert plain.init_logit_bias == -10.0 and plain.init_logit_scale == pytest.approx(math.log(10))
