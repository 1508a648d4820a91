"""Our readings of the two language identifiers give exactly their own answers, and the
models load once."""

from __future__ import annotations

import threading

import pytest

from tasks.curate import language
from tasks.curate.language import (
    NEGLIGIBLE,
    NO_READING,
    _fasttext,
    _identifier,
    fasttext_distribution,
    langid_distribution,
    read_language,
)

CAPTIONS = [
    "my new ankle boots for the winter",
    "Ein schöner roter Apfel auf dem Tisch",
    "東京の夜景の写真",
    "zapatos rojos para la fiesta de verano",
    "IMG_1234.jpg",
    "un pull en laine tricoté à la main",
    "кошка спит на диване",
    "a",
    "\u00e9\u00e9\u00e9 \ufffd\ufffd",
]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_same_language_and_probability_as_langid(caption):
    expected_language, expected_probability = _identifier().classify(caption)
    distribution = langid_distribution(caption)
    assert max(distribution, key=distribution.__getitem__) == expected_language
    assert distribution[expected_language] == pytest.approx(expected_probability, abs=1e-5)


@pytest.mark.parametrize("caption", CAPTIONS)
def test_same_distribution_as_fasttext(caption):
    labels, probs = _fasttext().predict(caption, k=-1, threshold=0.0)
    expected = {label.removeprefix("__label__"): p for label, p in zip(labels, probs, strict=True)}
    ours = fasttext_distribution(caption)
    assert ours == pytest.approx({code: expected[code] for code in ours})
    # fastText prunes against its threshold with approximate logarithms: only labels near
    # NEGLIGIBLE may be left out or kept.
    assert {code for code, p in expected.items() if p >= 1.2 * NEGLIGIBLE} <= set(ours)
    assert all(p >= 0.8 * NEGLIGIBLE for p in ours.values())


def test_the_reading_is_the_mean_of_the_two_distributions():
    caption = "pullover for sale, classic, good condition"
    lid, ft = langid_distribution(caption), fasttext_distribution(caption)
    reading = read_language(caption, {"en", "da"})
    both = {code: (lid.get(code, 0) + ft.get(code, 0)) / 2 for code in lid | ft}
    assert reading.language == max(both, key=both.__getitem__)
    assert reading.confidence == pytest.approx(both[reading.language])
    assert reading.allowed_probability == pytest.approx(both["en"] + both["da"])
    assert read_language(caption, set()).allowed_probability is None


def test_a_caption_of_several_lines_is_read_whole():
    """fastText reads one line (fasttext-predict refuses a newline): the lines are joined."""
    text = "ein warmer Wintermantel\nmit vielen Taschen"
    assert fasttext_distribution(text) == fasttext_distribution(" ".join(text.split()))
    assert read_language(text, {"en"}).language == "de"


def test_a_lone_surrogate_is_read_not_raised():
    """Neither model can take a str with no UTF-8 spelling; one must not end the shard."""
    reading = read_language("\ud800 ein warmer Wintermantel mit Taschen", {"en"})
    assert reading.language == "de"


def test_empty_caption_has_no_language():
    assert read_language("  ", {"en"}) == NO_READING
    assert read_language(None, {"en"}) == NO_READING


def test_threads_that_start_together_load_each_model_once(monkeypatch):
    """Curate's shard tasks run on threads of one process and all ask for a language at
    once: each model (langid ~1.2 s to unpickle) must be loaded once, not once per thread."""
    loads = []
    real_langid = language.LanguageIdentifier.from_modelstring
    real_fasttext = language._fasttext_loaded.__wrapped__

    def slow_langid(*args, **kwargs):
        loads.append("langid")
        return real_langid(*args, **kwargs)

    def counted_fasttext():
        loads.append("fasttext")
        return real_fasttext()

    monkeypatch.setattr(language.LanguageIdentifier, "from_modelstring", slow_langid)
    language._loaded.cache_clear()
    language._fasttext_loaded.cache_clear()
    monkeypatch.setattr(language, "_fasttext_loaded", language.cache(counted_fasttext))
    start = threading.Barrier(6)

    def ask() -> None:
        start.wait()
        read_language("my new ankle boots for the winter", {"en"})

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    language._loaded.cache_clear()
    assert sorted(loads) == ["fasttext", "langid"]
