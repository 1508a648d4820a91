"""The BPE tokenizer against ``open_clip``'s as the reference: ids, call shape, training."""

from __future__ import annotations

import gzip

import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from demo.text_corpus import hard_strings, web_captions
from model import get_tokenizer, train_tokenizer
from model.tokenizer import ClipTokenizer, read_merges


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return get_tokenizer()


def _first_mismatch(ours: torch.Tensor, ref: torch.Tensor, texts: list[str]) -> str | None:
    rows = (ours != ref).any(dim=1).nonzero().flatten().tolist()
    if not rows:
        return None
    i = rows[0]
    return f"{len(rows)} rows differ; first {texts[i]!r}: {ours[i].tolist()} vs {ref[i].tolist()}"


def test_ids_equal_open_clip_on_20000_hard_strings(tok: ClipTokenizer) -> None:
    texts = hard_strings(20_000, seed=1)
    assert sum(not t.isascii() for t in texts) > 5_000
    assert sum(len(t) > 1_000 for t in texts) > 100
    assert "" in texts
    ours = tok(texts)
    ref = open_clip.tokenize(texts)
    assert ours.dtype == torch.long and ours.shape == (20_000, 77)
    assert _first_mismatch(ours, ref, texts) is None


@pytest.mark.parametrize("length", [2, 3, 5, 16, 32, 200])
def test_truncation_keeps_end_token_at_any_context_length(tok: ClipTokenizer, length: int) -> None:
    texts = hard_strings(300, seed=length)
    ours = tok(texts, context_length=length)
    ref = open_clip.tokenize(texts, context_length=length)
    assert _first_mismatch(ours, ref, texts) is None
    assert (ours.argmax(dim=1) >= 1).all()


def test_call_shapes_and_defaults() -> None:
    tok = get_tokenizer()
    assert tok("a dog").shape == (1, 77)
    assert tok([]).shape == (0, 77)
    assert get_tokenizer("clipflow-tiny")(["a dog"]).shape == (1, 32)
    assert get_tokenizer("clipflow-tiny", context_length=10)(["a dog"]).shape == (1, 10)
    assert get_tokenizer(context_length=20)(["a dog"]).shape == (1, 20)
    assert tok(["a dog"], context_length=8).shape == (1, 8)
    empty = tok([""])[0]
    assert empty[:3].tolist() == [tok.sot_token_id, tok.eot_token_id, 0]
    assert tok.vocab_size == 49408


def test_bad_inputs_are_named() -> None:
    tok = get_tokenizer()
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        tok(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="context_length"):
        tok(["x"], context_length=1)
    with pytest.raises(ValueError, match="no-such-model"):
        get_tokenizer("no-such-model")


def test_encode_and_decode_match_open_clip(tok: ClipTokenizer) -> None:
    ref = SimpleTokenizer()
    for text in hard_strings(200, seed=7):
        assert tok.encode(text) == ref.encode(text), text
    text = "a photo of 2 dogs, it's sunny!"
    ids = tok(text)[0].tolist()
    assert tok.decode(ids) == ref.decode(tok.encode(text)).strip()
    assert tok.decode(ids) == "a photo of 2 dogs , it 's sunny !"


def test_word_cache_bound_does_not_change_ids() -> None:
    texts = web_captions(500, seed=3)
    small = ClipTokenizer(max_cached_words=50)
    chunks = [texts[i : i + 25] for i in range(0, len(texts), 25)]
    ours = torch.cat([small(chunk) for chunk in chunks])
    assert torch.equal(ours, open_clip.tokenize(texts))
    distinct_words = {w for t in texts for w in t.lower().split()}
    assert len(small._word_ids) < len(distinct_words) / 2


def test_trained_vocabulary_round_trips_through_open_clip(tmp_path) -> None:
    corpus = web_captions(3_000, seed=11, non_ascii_fraction=0.2)
    path = train_tokenizer(corpus, vocab_size=1_000, out_path=tmp_path / "vocab.txt.gz")
    merges = read_merges(path)
    assert 0 < len(merges) <= 1_000 - 514
    tok = get_tokenizer(str(path))
    assert tok.vocab_size == 514 + len(merges)
    # OpenAI's own reader accepts the file and produces the same ids.
    ref = SimpleTokenizer(bpe_path=str(path))
    held_out = web_captions(500, seed=12, non_ascii_fraction=0.3)
    ids = tok(corpus[:500] + held_out)
    assert torch.equal(ids, ref(corpus[:500] + held_out))
    # End-of-text is the largest id, which the text tower's argmax pooling relies on.
    assert (ids.argmax(dim=1) == (ids == tok.eot_token_id).int().argmax(dim=1)).all()
    # Merges learned from the corpus compress it well below one token per byte.
    n_tokens = (ids[:500] > 0).sum().item() - 1000
    n_bytes = sum(len(c.encode()) for c in corpus[:500])
    assert n_tokens < 0.6 * n_bytes


def test_train_tokenizer_rejects_bad_sizes(tmp_path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], vocab_size=100, out_path=tmp_path / "v.txt.gz")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], vocab_size=60_000, out_path=tmp_path / "v.txt.gz")


def test_unreadable_vocabulary_is_named(tmp_path) -> None:
    bad = tmp_path / "broken.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="broken.txt.gz"):
        ClipTokenizer(bad)
    odd = tmp_path / "odd.txt.gz"
    with gzip.open(odd, "wt") as f:
        f.write("#version\na b c\n")
    with pytest.raises(ValueError, match="line 2"):
        ClipTokenizer(odd)
