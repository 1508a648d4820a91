"""Checkpoint loading: every accepted layout, and clear refusals."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from model import create_model, load_checkpoint


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("clipflow-tiny")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_our_layout_returns_its_extra_entries(source, tmp_path) -> None:
    path = tmp_path / "latest.pt"
    cfg = source.config.to_dict()
    torch.save({"state_dict": source.state_dict(), "model_config": cfg, "epoch": 3}, path)
    target = create_model("clipflow-tiny")
    assert not _same_weights(source, target)
    extra = load_checkpoint(target, path)
    assert _same_weights(source, target)
    assert extra == {"model_config": cfg, "epoch": 3}
    assert create_model(extra["model_config"], pretrained=path).config == source.config


def test_open_clip_training_layout_with_module_prefix(source, tmp_path) -> None:
    path = tmp_path / "epoch_1.pt"
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 1, "name": "run", "state_dict": wrapped, "optimizer": {}}, path)
    target = create_model("clipflow-tiny")
    load_checkpoint(target, str(path))
    assert _same_weights(source, target)


def test_openai_plain_layout_with_metadata_and_vector_scale(source) -> None:
    state = dict(source.state_dict())
    state["logit_scale"] = state["logit_scale"].reshape(1)
    state.update(input_resolution=torch.tensor(28), context_length=32, vocab_size=49408)
    target = create_model("clipflow-tiny")
    assert load_checkpoint(target, state) == {}
    assert _same_weights(source, target)


def test_mismatched_architecture_names_the_keys(source, tmp_path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    deeper = source.config.to_dict()
    deeper["text_cfg"]["layers"] = 4
    deeper["vision_cfg"]["width"] = 128
    target = create_model(deeper)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_checkpoint(target, path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys" in message and "transformer.resblocks.3.attn.in_proj_weight" in message
    assert "shape mismatches" in message and "visual.conv1.weight" in message
    # Nothing was half-loaded.
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())

    state = dict(source.state_dict(), extra_head=torch.zeros(3))
    with pytest.raises(ValueError, match="unexpected keys \\(1\\): extra_head"):
        load_checkpoint(create_model("clipflow-tiny"), state)


class _NotATensor:
    pass


def test_arbitrary_pickles_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {"x": _NotATensor()}}, buffer, pickle_module=pickle)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(create_model("clipflow-tiny"), path)


def test_non_dict_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="list.pt: expected a dict"):
        load_checkpoint(create_model("clipflow-tiny"), path)
