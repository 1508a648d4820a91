"""``train.token_rows: used`` trains only the token-embedding rows the captions use, and ends
with the same weights as the whole table, bit for bit (on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import webdataset as wds

from model.clip import create_model
from model.data import read_shard_list
from model.token_rows import UsedTokenRows, use_token_rows, used_token_ids
from model.tokenizer import get_tokenizer
from model.train import Distributed, check_same_token_rows, train
from model.train_config import TrainConfig, TrainRun
from tests.train.conftest import read_metrics


def run(shards: Path, output: Path, token_rows: str, **over: object) -> dict:
    """12 steps of clipflow-tiny-p7 in one process, with clipping and weight decay on."""
    torch.set_num_threads(1)  # as each torchrun rank
    cfg = TrainRun(
        shards=str(shards), output=str(output), model="clipflow-tiny-p7", batch_size=32,
        samples=32 * 12, lr=2e-3, warmup=3, grad_clip_norm=1.0, weight_decay=0.2,
        precision="fp32", workers=0, log_every_steps=1, checkpoint_every_steps=6,
        resume=None, token_rows=token_rows, **over,
    )  # fmt: skip
    train(cfg, Distributed(0, 1, torch.device("cpu")))
    return torch.load(output / "checkpoints" / "latest.pt", weights_only=True)


def test_used_rows_train_the_same_weights_as_the_whole_table(
    fashion_shards: Path, tmp_path: Path
) -> None:
    whole = run(fashion_shards, tmp_path / "all", "all")
    used = run(fashion_shards, tmp_path / "used", "used")
    assert whole["state_dict"].keys() == used["state_dict"].keys()
    differ = [
        k for k, v in whole["state_dict"].items() if not torch.equal(v, used["state_dict"][k])
    ]
    assert differ == []
    losses = [r["loss"] for r in read_metrics(tmp_path / "all")]
    assert [r["loss"] for r in read_metrics(tmp_path / "used")] == losses
    # The premise: under the whole table, the rows no caption uses have zero moments (their
    # update was the weight decay alone), and they did move (the decay was applied).
    rows = used["token_rows"]
    unused = torch.ones(whole["state_dict"]["token_embedding.weight"].shape[0], dtype=torch.bool)
    unused[rows] = False
    table_state = whole["optimizer"]["state"]
    embedding = next(s for s in table_state.values() if s["exp_avg"].shape[:1] == unused.shape)
    assert not embedding["exp_avg"][unused].any() and not embedding["exp_avg_sq"][unused].any()
    torch.manual_seed(0)
    initial = create_model("clipflow-tiny-p7").token_embedding.weight.detach()
    final = whole["state_dict"]["token_embedding.weight"]
    assert not torch.equal(final[unused], initial[unused])
    assert 0 < len(rows) < len(unused) // 10


def test_used_ids_are_every_token_the_loader_feeds(fashion_shards: Path) -> None:
    tokenizer = get_tokenizer("clipflow-tiny-p7")
    shards, _ = read_shard_list(str(fashion_shards), {})
    captions = [
        s["txt"].decode().strip()
        for s in wds.WebDataset([str(s) for s in shards], shardshuffle=False)
    ]
    want = tokenizer(captions).unique()
    assert torch.equal(used_token_ids(shards, {}, tokenizer), want)
    assert 0 in want.tolist()  # padding is looked up too


def test_the_state_dict_is_the_whole_table_and_loads_back() -> None:
    torch.manual_seed(0)
    plain = create_model("clipflow-tiny-p7")
    torch.manual_seed(0)
    model = create_model("clipflow-tiny-p7")
    rows = use_token_rows(model, torch.tensor([0, 5, 49407]))
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    assert torch.equal(state["token_embedding.weight"], plain.token_embedding.weight)
    assert [n for n, _ in model.named_parameters() if "token" in n] == ["token_embedding.rows"]
    table = torch.randn_like(plain.token_embedding.weight)
    model.load_state_dict({**state, "token_embedding.weight": table})
    assert torch.equal(model.state_dict()["token_embedding.weight"], table)
    assert torch.equal(rows.rows.detach(), table[[0, 5, 49407]])
    ids = torch.tensor([[49407, 5, 0]])
    assert torch.equal(rows(ids), table[ids])


def test_a_token_outside_the_used_rows_is_refused_by_name() -> None:
    rows = UsedTokenRows(torch.nn.Embedding(100, 4), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"token ids \[7\] are not among the 3 rows"):
        rows(torch.tensor([[1, 7, 2]]))


def test_a_resume_with_other_rows_is_refused() -> None:
    ids = torch.tensor([0, 4, 9])
    check_same_token_rows(None, None)
    check_same_token_rows(ids, ids.clone())
    for saved, current in ((None, ids), (ids, None), (ids, torch.tensor([0, 4]))):
        with pytest.raises(ValueError, match="cannot resume: the checkpoint trained"):
            check_same_token_rows(saved, current)


def test_used_rows_are_refused_with_fp16_loss_scaling() -> None:
    with pytest.raises(ValueError, match="token_rows 'used' is not supported with precision"):
        TrainConfig(token_rows="used", precision="amp_fp16")
    with pytest.raises(ValueError, match="train.token_rows must be one of"):
        TrainConfig(token_rows="some")
