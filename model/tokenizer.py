"""CLIP's byte-level BPE tokenizer, exact to ``open_clip.tokenize``, batch-encoded in Rust.

The text pipeline is OpenAI's: ftfy fix, HTML unescape (twice), whitespace collapse,
lower-case, CLIP's regex pre-split, byte-level BPE with ``</w>`` word ends, then
``<start_of_text> ids <end_of_text>``, truncated to ``context_length`` keeping the end token
and zero-padded. The BPE runs in the HF ``tokenizers`` library.

Cleaning and the regex pre-split run in Python exactly as OpenAI's code does them (ftfy,
``html.unescape``, the ``regex`` module's Unicode classes), except that plain ASCII captions
(no ``&``, no control characters), which ftfy and HTML unescaping leave unchanged, skip
those two: ftfy dominates the cost. BPE then runs once per distinct word, batched in Rust,
and a batch of ids is assembled from the words' ids with numpy.

A vocabulary file is CLIP's merges format (gzipped text: a header line, then one
``left right`` merge per line); ``train_tokenizer`` writes the same format from a caption
corpus, so ``open_clip.tokenizer.SimpleTokenizer(bpe_path=...)`` reads ours too.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from model.atomic import AtomicWriter
from model.config import CONFIG_DIR, get_model_config, list_models

log = logging.getLogger(__name__)

SOT, EOT = "<start_of_text>", "<end_of_text>"
DEFAULT_CONTEXT_LENGTH = 77
MAX_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of its file
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# OpenAI's pre-split, special tokens first; case-insensitive as in their code.
_CLIP_SPLIT = regex.compile(rf"{SOT}|{EOT}|{_WORD_PATTERN}", regex.IGNORECASE)
# Characters that send a caption down the Python route: non-ASCII, '&', controls.
_NEEDS_CLEANING = re.compile(r"[^\t\n\r\x20-\x25\x27-\x7e]")
# Plain-route captions contain no NUL, so a batch of them is split in one regex pass over
# their NUL-joined text: NUL is matched as a word of its own and marks where a caption ends.
_SEP = "\x00"
_PLAIN_BATCH_SPLIT = regex.compile(
    rf"""\x00|{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\x00\s\p{{L}}\p{{N}}]+""",
    regex.IGNORECASE,
)


def default_vocab_path() -> Path:
    """CLIP's 49,152-merge vocabulary as shipped inside the ``open_clip_torch`` wheel."""
    # find_spec locates the package without importing it (importing open_clip is slow).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("CLIP's vocabulary ships in open_clip_torch, which is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the base of byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """Merges of a CLIP-format vocabulary file, in rank order (at most ``MAX_MERGES``)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read BPE vocabulary {path}: {e}") from e
    merges = []
    for number, line in enumerate(lines[1 : 1 + MAX_MERGES], start=2):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {number} is not a 'left right' merge: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    # OpenAI's id layout: bytes, bytes + '</w>', merge results, then the two special tokens.
    # dict(zip(...)) keeps the last id of a repeated token, as their encoder does.
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [SOT, EOT]
    return dict(zip(tokens, range(len(tokens)), strict=True))


def _build_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """Byte-level BPE for single pre-split words (each input string is one word)."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return tok


class ClipTokenizer:
    """Callable as ``tok(texts, context_length=None) -> LongTensor (N, context_length)``.

    Words repeat across captions far more than captions do, so BPE runs once per distinct
    word (in Rust, batched) and its ids are remembered; a batch is then assembled from word
    ids with numpy gathers rather than per-token Python.
    """

    def __init__(
        self,
        vocab_path: str | Path | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        max_cached_words: int = 1_000_000,
    ) -> None:
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        self.context_length = context_length
        merges = read_merges(self.vocab_path)
        vocab = _vocab_from_merges(merges)
        self._id_to_token = {i: t for t, i in vocab.items()}
        self.sot_token_id, self.eot_token_id = vocab[SOT], vocab[EOT]
        self.vocab_size = self.eot_token_id + 1
        self._bpe = _build_bpe(vocab, merges)
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self._max_cached_words = max_cached_words
        self._specials: dict[str, tuple[int, ...]] = {
            SOT: (self.sot_token_id,),
            EOT: (self.eot_token_id,),
            _SEP: (),
        }
        self._word_ids: dict[str, tuple[int, ...]] = dict(self._specials)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Token ids (N, context_length), int64: start, BPE ids, end (kept on truncation), 0s."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"context_length must be at least 2, got {length}")
        plain_rows, plain, other_rows, other = [], [], [], []
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] is a {type(text).__name__}, not a str")
            # ftfy and HTML unescaping leave plain ASCII unchanged, and they dominate the cost.
            if _NEEDS_CLEANING.search(text):
                other_rows.append(row)
                other.extend(_CLIP_SPLIT.findall(clean_text(text)))
                other.append(_SEP)
            else:
                plain_rows.append(row)
                plain.append(text)
        out = np.zeros((len(texts), length), dtype=np.int64)
        if plain:
            words = _PLAIN_BATCH_SPLIT.findall(_SEP.join(plain).lower())
            out[plain_rows] = self._assemble(words, len(plain), length)
        if other:
            out[other_rows] = self._assemble(other, len(other_rows), length)
        return torch.from_numpy(out)

    @staticmethod
    def _split(text: str) -> list[str]:
        """CLIP's words of one text, after cleaning."""
        cleaned = clean_text(text) if _NEEDS_CLEANING.search(text) else text.lower()
        words: list[str] = _CLIP_SPLIT.findall(cleaned)
        return words

    def _ids_of_distinct(self, words: list[str]) -> list[tuple[int, ...]]:
        """BPE ids of each word in ``words`` (distinct), from the cache or a Rust batch."""
        new = [w for w in words if w not in self._word_ids]
        if len(self._word_ids) + len(new) > self._max_cached_words:
            # Start over rather than track recency: cheap, and bounds memory on a stream.
            self._word_ids = dict(self._specials)
            new = [w for w in words if w not in self._word_ids]
        if new:
            encoded = self._bpe.encode_batch_fast(new, add_special_tokens=False)
            self._word_ids.update(zip(new, (tuple(e.ids) for e in encoded), strict=True))
        return [self._word_ids[w] for w in words]

    def _assemble(self, words: list[str], n_rows: int, length: int) -> np.ndarray:
        """Rows of ``[sot, ids..., eot, 0...]`` from a flat word list where ``_SEP`` ends
        each row (the last one may be left open)."""
        distinct = list(dict.fromkeys(words))
        word_ids = self._ids_of_distinct(distinct)
        position = {w: i for i, w in enumerate(distinct)}
        # Flat table of all distinct words' ids; word k spans table[start[k] : start[k] + n[k]].
        n = np.fromiter(map(len, word_ids), dtype=np.int64, count=len(word_ids))
        table = np.fromiter(chain.from_iterable(word_ids), dtype=np.int64, count=int(n.sum()))
        start = np.cumsum(n) - n
        k = np.fromiter(map(position.__getitem__, words), dtype=np.int64, count=len(words))
        is_sep = k == position.get(_SEP, -1)
        word_row = np.cumsum(is_sep) - is_sep  # a separator belongs to the row it ends
        # Every token of every text, in order: its id, its row, its column.
        token_counts = n[k]  # separators have none
        first_token = np.cumsum(token_counts) - token_counts
        offset_in_word = np.arange(int(token_counts.sum())) - np.repeat(first_token, token_counts)
        ids = table[np.repeat(start[k], token_counts) + offset_in_word]
        rows = np.repeat(word_row, token_counts)
        per_row = np.bincount(rows, minlength=n_rows)  # tokens per text
        col = np.arange(len(ids)) - (np.cumsum(per_row) - per_row)[rows] + 1
        # Truncate to leave room for the end token, which always survives.
        keep = col < length - 1
        out = np.zeros((n_rows, length), dtype=np.int64)
        out[rows[keep], col[keep]] = ids[keep]
        out[:, 0] = self.sot_token_id
        out[np.arange(n_rows), np.minimum(per_row, length - 2) + 1] = self.eot_token_id
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens and without truncation."""
        words = self._split(text)
        distinct = list(dict.fromkeys(words))
        ids = dict(zip(distinct, self._ids_of_distinct(distinct), strict=True))
        return [i for w in words for i in ids[w]]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of BPE ids; start, end and padding positions after the end are dropped."""
        tokens = []
        for i in ids:
            if i == self.eot_token_id:
                break
            if i != self.sot_token_id:
                tokens.append(self._id_to_token[int(i)])
        raw = bytearray(self._byte_decoder[c] for c in "".join(tokens))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()


@lru_cache(maxsize=8)
def _cached_tokenizer(vocab_path: str | None, context_length: int) -> ClipTokenizer:
    return ClipTokenizer(vocab_path, context_length)


def get_tokenizer(
    name_or_vocab: str | Path | None = None, context_length: int | None = None
) -> ClipTokenizer:
    """CLIP's tokenizer, or one with a trained vocabulary.

    ``name_or_vocab`` is None (CLIP's vocabulary, context 77), a model config name or JSON
    path (CLIP's vocabulary, that config's ``context_length``), or a vocabulary file written
    by ``train_tokenizer``. An explicit ``context_length`` wins over the config's.
    """
    vocab_path: str | None = None
    default_length = DEFAULT_CONTEXT_LENGTH
    if name_or_vocab is not None:
        name = str(name_or_vocab)
        if name in list_models() or name.endswith(".json"):
            default_length = get_model_config(name).text.context_length
        elif Path(name).is_file():
            vocab_path = name
        else:
            raise ValueError(
                f"get_tokenizer: {name!r} is neither a model config ({list_models()} or a "
                f".json path under e.g. {CONFIG_DIR}) nor a vocabulary file"
            )
    return _cached_tokenizer(vocab_path, context_length or default_length)


def train_tokenizer(
    captions: Iterable[str], vocab_size: int, out_path: str | Path, min_frequency: int = 2
) -> Path:
    """Learn a byte-level BPE vocabulary of ``vocab_size`` ids from captions (CLIP paper, §2.4).

    ``vocab_size`` counts the 512 byte tokens and the 2 special tokens, so the file holds
    ``vocab_size - 514`` merges (fewer if the corpus runs out of pairs seen ``min_frequency``
    times). Captions are cleaned and pre-split exactly as at encoding time. Writes CLIP's
    gzipped merges format to ``out_path`` and returns it; load it with ``get_tokenizer``.
    """
    base = 2 * 256 + 2
    if not base < vocab_size <= base + MAX_MERGES:
        raise ValueError(f"vocab_size must be in ({base}, {base + MAX_MERGES}], got {vocab_size}")
    n_merges = vocab_size - base
    # The trainer's own vocabulary also holds the characters it saw (at most 512 with and
    # without '</w>'), so asking for that many more ids yields at least n_merges merges.
    trainer = trainers.BpeTrainer(
        vocab_size=n_merges + 2 * 256,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    # Captions arrive pre-split by the encoder's own Python split, joined by spaces (which
    # no word contains), so training sees exactly the words that encoding will.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    words = (
        " ".join(w for w in ClipTokenizer._split(caption) if w not in (SOT, EOT))
        for caption in captions
    )
    backend.train_from_iterator(words, trainer=trainer)
    merges = _trained_merges(backend)[:n_merges]
    out = Path(out_path)
    # No trailing newline: OpenAI's reader would turn it into an empty merge.
    text = "\n".join(["#version: 0.2 (clipflow train_tokenizer)"] + [f"{a} {b}" for a, b in merges])
    AtomicWriter().write_bytes(gzip.compress(text.encode("utf-8")), str(out))
    log.info("trained BPE vocabulary: %d merges from the corpus -> %s", len(merges), out)
    return out


def _trained_merges(backend: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(backend.to_str())["model"]["merges"]
    # tokenizers writes merges as [left, right] pairs (>=0.20) or "left right" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
