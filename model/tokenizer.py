"""CLIP's byte-level BPE tokenizer, exact to ``open_clip.tokenize``, batch-encoded in Rust.

The text pipeline is OpenAI's: ftfy fix, HTML unescape (twice), whitespace collapse,
lower-case, CLIP's regex pre-split, byte-level BPE with ``</w>`` word ends, then
``<start_of_text> ids <end_of_text>``, truncated to ``context_length`` keeping the end token
and zero-padded. The BPE runs in the HF ``tokenizers`` library.

Two routes give identical ids; they differ in where the text is cleaned and split:
- plain ASCII captions (no ``&``, no control characters, no special-token text), which ftfy
  and HTML unescaping leave unchanged: lower-cased in Python, pre-split and encoded in Rust;
- everything else: cleaned and pre-split in Python exactly as OpenAI's code does it (ftfy,
  ``html.unescape``, the ``regex`` module's Unicode classes), then encoded in Rust as
  pre-tokenized words. ftfy dominates the cost of this route.

A vocabulary file is CLIP's merges format (gzipped text: a header line, then one
``left right`` merge per line); ``train_tokenizer`` writes the same format from a caption
corpus, so ``open_clip.tokenizer.SimpleTokenizer(bpe_path=...)`` reads ours too.
"""

from __future__ import annotations

import gzip
import html
import importlib.resources
import json
import logging
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch
from tokenizers import Encoding, Regex, Tokenizer, models, pre_tokenizers, processors, trainers

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


def default_vocab_path() -> Path:
    """CLIP's 49,152-merge vocabulary as shipped inside the ``open_clip_torch`` wheel."""
    return Path(str(importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"))


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


def _build_backend(
    vocab: dict[str, int], merges: list[tuple[str, str]], pretokenized: bool
) -> Tokenizer:
    bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", cache_capacity=200_000)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pretokenized:
        tok.pre_tokenizer = byte_level
        tok.add_special_tokens([SOT, EOT])
    else:
        # Keep the regex matches, drop what lies between them (whitespace): re.findall.
        split = pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])]
    )
    return tok


class ClipTokenizer:
    """Callable as ``tok(texts, context_length=None) -> LongTensor (N, context_length)``."""

    def __init__(
        self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> None:
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        self.context_length = context_length
        merges = read_merges(self.vocab_path)
        vocab = _vocab_from_merges(merges)
        self._id_to_token = {i: t for t, i in vocab.items()}
        self.sot_token_id, self.eot_token_id = vocab[SOT], vocab[EOT]
        self.vocab_size = self.eot_token_id + 1
        self._plain = _build_backend(vocab, merges, pretokenized=False)
        self._pretokenized = _build_backend(vocab, merges, pretokenized=True)
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Token ids (N, context_length), int64: start, BPE ids, end (kept on truncation), 0s."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"context_length must be at least 2, got {length}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        plain_rows, plain_texts, other_rows, other_words = [], [], [], []
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] is a {type(text).__name__}, not a str")
            lowered = text.lower()
            if _NEEDS_CLEANING.search(text) or "_of_text>" in lowered:
                other_rows.append(row)
                other_words.append(_CLIP_SPLIT.findall(clean_text(text)))
            else:
                plain_rows.append(row)
                plain_texts.append(lowered)
        if plain_texts:
            self._fill(out, plain_rows, self._encode(self._plain, plain_texts, length, False))
        if other_words:
            self._fill(out, other_rows, self._encode(self._pretokenized, other_words, length, True))
        return out

    @staticmethod
    def _encode(
        backend: Tokenizer, inputs: list, length: int, pretokenized: bool
    ) -> list[Encoding]:
        # Truncation counts the two special tokens, so the end token survives it.
        backend.enable_truncation(max_length=length)
        backend.enable_padding(length=length, pad_id=0, pad_token="!")
        return backend.encode_batch_fast(inputs, is_pretokenized=pretokenized)

    @staticmethod
    def _fill(out: torch.Tensor, rows: list[int], encodings: list[Encoding]) -> None:
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        if len(rows) == out.shape[0]:
            out.copy_(ids)
        else:
            out[torch.tensor(rows, dtype=torch.long)] = ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens and without truncation."""
        words = _CLIP_SPLIT.findall(clean_text(text))
        self._pretokenized.no_truncation()
        self._pretokenized.no_padding()
        return self._pretokenized.encode(words, is_pretokenized=True, add_special_tokens=False).ids

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
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.train_from_iterator((clean_text(c) for c in captions), trainer=trainer)
    merges = _trained_merges(backend)[:n_merges]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        # No trailing newline: OpenAI's reader would turn it into an empty merge.
        f.write(
            "\n".join(
                ["#version: 0.2 (clipflow train_tokenizer)"] + [f"{a} {b}" for a, b in merges]
            )
        )
    tmp.replace(out)
    log.info("trained BPE vocabulary: %d merges from the corpus -> %s", len(merges), out)
    return out


def _trained_merges(backend: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(backend.to_str())["model"]["merges"]
    # tokenizers writes merges as [left, right] pairs (>=0.20) or "left right" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
