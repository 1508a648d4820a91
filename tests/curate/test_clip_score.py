"""The CLIP-score filter and SemDeDup, with a randomly initialised tiny CLIP saved to disk:
random weights say nothing about quality, so this checks the mechanics (scores computed and
correct, top fraction applied, embeddings reach the semantic dedup step).

SemDeDup's planted duplicates are the web's near copies (resized, re-encoded): the pixel
matcher is set to accept only identical thumbnails here, so those copies reach the semantic
step, and a random tower still maps an image and its copy closer together (under
SEMANTIC_EPS) than any two different images."""

from __future__ import annotations

import io
import json
import posixpath
import tarfile

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from model import create_model
from tasks.core.config import ConfigError
from tasks.core.storage import Storage
from tasks.curate.clip_score import ClipScorer
from tasks.curate.features import shard_features
from tasks.curate.stage import curate, list_download_shards
from tests.curate.conftest import DownloadedWeb

TOP_FRACTION = 0.5
SEMANTIC_EPS = 1e-6


@pytest.fixture(scope="module")
def scored(downloaded_web: DownloadedWeb, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    checkpoint = work / "tiny.pt"
    torch.save(create_model("clipflow-tiny").state_dict(), checkpoint)
    root = downloaded_web.root_with_download(work / "root")
    cfg = downloaded_web.config(
        root, clip_score_checkpoint=str(checkpoint), clip_score_model="clipflow-tiny",
        clip_score_top_fraction=TOP_FRACTION, semantic_dedup=True,
        semantic_dedup_eps=SEMANTIC_EPS, near_dup_min_similarity=1.0,
        near_dup_band_min_similarity=1.0, gate="warn",
    )  # fmt: skip
    result = curate(cfg, Storage(cfg.storage))
    samples = pd.read_parquet(root / "curate" / "samples.parquet")
    return result, samples, root, str(checkpoint)


def test_scores_for_every_decoded_image_with_a_caption(scored):
    _, samples, _, _ = scored
    has_score = samples["clip_score"].notna()
    eligible = (samples["image_state"] == "ok") & samples["caption"].fillna("").str.strip().ne("")
    assert (has_score == eligible).all()
    assert samples.loc[has_score, "clip_score"].between(-1.0, 1.0).all()


def test_top_fraction_keeps_the_highest_scores(scored):
    _, samples, _, _ = scored
    scores = samples["clip_score"].dropna()
    dropped = samples[samples["drop_clip_score"]]
    assert len(dropped) == pytest.approx((1 - TOP_FRACTION) * len(scores), abs=1)
    assert (
        dropped["clip_score"].max() < samples.loc[~samples["drop_clip_score"], "clip_score"].min()
    )


def test_score_equals_a_direct_recomputation(scored):
    _, samples, root, checkpoint = scored
    row = samples[samples["clip_score"].notna()].iloc[0]
    with tarfile.open(root / "download" / row["download_shard"]) as tar:
        data = tar.extractfile(f"{row['key']}.jpg").read()  # type: ignore[union-attr]
    scorer = ClipScorer(checkpoint, "clipflow-tiny")
    image = scorer.image_embeddings([Image.open(io.BytesIO(data)).convert("RGB")])
    text = scorer.text_embeddings([row["caption"]])
    assert float((image * text).sum()) == pytest.approx(row["clip_score"], abs=1e-4)


def test_semantic_dedup_ran_on_the_embeddings(scored):
    result, samples, root, _ = scored
    embeddings = np.load(next((root / "curate" / "_parts").glob("*.emb.npy")))
    assert embeddings.shape[1] == 64  # clipflow-tiny embed_dim
    summary = json.loads((root / "curate" / "report" / "summary.json").read_text())
    assert summary["kept"] + sum(summary["dropped_by_reason"].values()) == summary["input"]


def test_semantic_dedup_drops_the_planted_copies_and_only_them(scored, downloaded_web):
    _, samples, _, _ = scored
    assert samples["drop_near_duplicate"].sum() == 0  # the pixel matcher let the copies through
    near = downloaded_web.planted.near_copies
    by_url = samples.set_index("url")
    dropped = set(samples.loc[samples["drop_semantic_duplicate"], "url"])
    assert len(dropped) == len(near)
    for copy, original in near.items():
        # One of each pair goes, named after the other (the survivor is the larger image).
        (gone,) = {copy, original} & dropped
        (kept,) = {copy, original} - {gone}
        assert by_url.loc[gone, "duplicate_of"] == by_url.loc[kept, "key"]
        assert by_url.loc[kept, "keep"]


def test_a_part_lists_its_rows_in_key_order_each_with_its_own_embedding(
    scored, downloaded_web, tmp_path
):
    """img2dataset writes a shard's rows as their downloads finish. A part lists them in key
    order, the order the download handed the keys out, so a row's rid (its place in curate's
    table) does not depend on the download's timing, and the duplicate-key rule reads the
    keys in order (sql/curate/rules.sql). Each row's embedding moves with it."""
    _, _, _, checkpoint = scored
    root = downloaded_web.root_with_download(tmp_path / "root")
    storage = Storage(downloaded_web.config(root).storage)
    shard = list_download_shards(storage)[0]
    path = root / "download" / posixpath.basename(shard)
    written = pq.read_table(path)  # as a download that finished its rows backwards lists them
    pq.write_table(written.take(pc.sort_indices(written, [("key", "descending")])), path)
    scorer = ClipScorer(checkpoint, "clipflow-tiny")
    features, embeddings = shard_features(storage, shard, [], scorer)
    n = written.num_rows
    assert features["key"].to_pylist() == sorted(written["key"].to_pylist())
    assert features["row_in_shard"].to_pylist() == list(range(n - 1, -1, -1))
    assert embeddings is not None and embeddings.shape[0] == n
    ok = [i for i, state in enumerate(features["image_state"].to_pylist()) if state == "ok"]
    assert len(ok) >= 3
    with tarfile.open(path.with_suffix(".tar")) as tar:
        for i in (ok[0], ok[len(ok) // 2], ok[-1]):
            member = tar.extractfile(f"{features['key'][i]}.jpg")
            image = Image.open(io.BytesIO(member.read())).convert("RGB")  # type: ignore[union-attr]
            np.testing.assert_allclose(embeddings[i], scorer.image_embeddings([image])[0],
                                       atol=1e-4)  # fmt: skip


def test_semantic_dedup_without_a_checkpoint_is_a_config_error(downloaded_web, tmp_path):
    with pytest.raises(ConfigError, match="semantic_dedup needs image embeddings"):
        downloaded_web.config(tmp_path, semantic_dedup=True)


def test_a_resnet_scorer_embeds_each_image_alone_as_in_a_batch(tmp_path):
    """The modified-ResNet tower scores too, with BatchNorm's running statistics (eval mode):
    an image's embedding does not depend on the others in its batch."""
    torch.manual_seed(1)
    model = create_model("clipflow-tiny-rn")
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
    checkpoint = tmp_path / "tiny-rn.pt"
    torch.save(
        {"state_dict": model.state_dict(), "model_config": model.config.to_dict()}, checkpoint
    )
    scorer = ClipScorer(str(checkpoint), "clipflow-tiny-rn")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), np.uint8)) for i in range(5)]
    together = scorer.image_embeddings(images)
    alone = np.concatenate([scorer.image_embeddings([image]) for image in images])
    assert together.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(alone, together, atol=1e-5)
    assert scorer.text_embeddings(["a red coat", "a sneaker"]).shape == (2, 64)
