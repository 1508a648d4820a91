"""Our sparse langid scoring gives exactly langid's own answers."""

from __future__ import annotations

import pytest

from tasks.curate.language import _identifier, identify_language

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
    language, probability = identify_language(caption)
    assert language == expected_language
    assert probability == pytest.approx(expected_probability, abs=1e-5)


def test_empty_caption_has_no_language():
    assert identify_language("  ") == (None, None)
    assert identify_language(None) == (None, None)


def test_threads_that_start_together_load_the_model_once(monkeypatch):
    """Curate's shard tasks run on threads of one process and all ask for a language at
    once: the model (~1.2 s to unpickle) must be loaded once, not once per thread."""
    import threading

    from tasks.curate import language

    loads = []
    real = language.LanguageIdentifier.from_modelstring

    def slow_load(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(language.LanguageIdentifier, "from_modelstring", slow_load)
    language._loaded.cache_clear()
    start = threading.Barrier(6)

    def ask() -> None:
        start.wait()
        identify_language("my new ankle boots for the winter")

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    language._loaded.cache_clear()
    assert len(loads) == 1
