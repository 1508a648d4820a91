"""The built-in benchmark sets: CLIP_benchmark's layout, deterministic, and evaluation prompts
that the demo web never uses as a caption."""

from __future__ import annotations

import collections
import io
import itertools
import os
import random
import re
import string
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from demo import benchmark_sets
from demo import captions as demo_captions
from demo.benchmark_sets import FASHION_MNIST_CLASSNAMES, FASHION_MNIST_TEMPLATES
from model.eval_data import read_dataset_info
from tests.evaluate.conftest import small_fashion_set
from tests.two_at_once import exit_codes_of_two_at_once


def _normalise(text: str) -> str:
    """Equality up to case, spacing and end punctuation: stricter than exact equality."""
    return re.sub(r"\s+", " ", text.casefold()).strip(" .!?")


def all_fashion_captions() -> set[str]:
    """Every caption demo.captions.fashion_caption can produce, enumerated (each
    template over only the fields it uses)."""
    dc = demo_captions
    out: set[str] = set()
    for singular, plural, synonyms in dc.FASHION_FORMS.values():
        choices = {"art": (dc._ART,), "n": (singular,), "p": (plural,), "syn": synonyms,
                   "adj": dc._ADJECTIVES, "when": dc._WHEN, "occ": dc._OCCASION}  # fmt: skip
        for template in dc._SINGULAR + dc._PLURAL:
            used = sorted({f for _, f, _, _ in string.Formatter().parse(template) if f})
            for values in itertools.product(*(choices[f] for f in used)):
                caption = dc._with_articles(template.format(**dict(zip(used, values, strict=True))))
                out.update({caption, caption[0].upper() + caption[1:]})
    return out


def test_enumeration_covers_what_the_generator_produces():
    captions = all_fashion_captions()
    rng = random.Random(7)
    for name in FASHION_MNIST_CLASSNAMES_TRAIN:
        for _ in range(300):
            assert demo_captions.fashion_caption(name, rng) in captions


FASHION_MNIST_CLASSNAMES_TRAIN = tuple(demo_captions.FASHION_FORMS)


def test_no_fashion_prompt_is_a_demo_caption():
    captions = {_normalise(c) for c in all_fashion_captions()}
    prompts = [
        _normalise(t.format(c=c)) for c in FASHION_MNIST_CLASSNAMES for t in FASHION_MNIST_TEMPLATES
    ]
    assert len(prompts) == 120 and len(captions) > 5_000
    assert not captions.intersection(prompts)


def test_fashion_class_names_are_the_demo_captions_nouns():
    """Each evaluation class name is the singular form the demo captions name it by, so a
    model trained on the demo web has seen the words its prompts use."""
    singular = [forms[0] for forms in demo_captions.FASHION_FORMS.values()]
    assert list(FASHION_MNIST_CLASSNAMES) == singular


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_conversion_is_deterministic_and_clip_benchmark_reads_it(tmp_path):
    from clip_benchmark.datasets.builder import build_wds_dataset

    first, second = tmp_path / "a", tmp_path / "b"
    benchmark_sets.write_set(first, small_fashion_set(60, 30), samples_per_shard=25)
    benchmark_sets.write_set(second, small_fashion_set(60, 30), samples_per_shard=25)
    assert _files(first) == _files(second)
    assert (first / "test" / "nshards.txt").read_text() == "3\n"
    ds = build_wds_dataset("x", transform=None, split="test", data_dir=str(first))
    samples = list(ds)
    assert len(samples) == 60 and ds.classes == list(FASHION_MNIST_CLASSNAMES)
    assert ds.templates == list(FASHION_MNIST_TEMPLATES)
    assert samples[0][0].size == (28, 28) and all(0 <= y < 10 for _, y in samples)


def test_emoji_subcategory_set_built_by_the_cli(tmp_path):
    assert benchmark_sets.main(["build", str(tmp_path), "--sets", "emoji_subcategory"]) == 0
    root = tmp_path / "emoji_subcategory"
    info = read_dataset_info(str(root), needs_templates=True)
    assert info.classnames is not None and len(info.classnames) > 50
    assert "letters and numbers" in info.classnames and "animal mammal" in info.classnames
    files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    built = benchmark_sets.build_set("emoji_subcategory", root)  # up to date: not rebuilt
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == files
    assert built["samples"]["test"] > 1800 and built["classes"] == len(info.classnames)
    from model import image_transform
    from model.eval_data import WdsEvalDataset, make_loader

    dataset = WdsEvalDataset(info, "test", image_transform(28, is_train=False))
    labels = torch.cat([y for _, y in make_loader(dataset, batch_size=512)])
    assert len(labels) == built["samples"]["test"]
    assert torch.bincount(labels).min() >= 3  # every subcategory kept has 3+ emoji


def test_emoji_retrieval_captions(emoji_retrieval_small):
    info = read_dataset_info(str(emoji_retrieval_small))
    assert info.dataset_type == "retrieval"
    emoji = benchmark_sets._base_emoji()[0]
    captions = benchmark_sets.emoji_captions(emoji)
    assert len(captions) == 2 and len(set(captions)) == 2 and all(emoji.name in c for c in captions)


def _build_in_a_child(name: str, out: str, log: str) -> None:
    """A child process's build_set of a set whose builder takes a second and logs its pid."""

    def slow_set(_train: int) -> benchmark_sets.BenchmarkSet:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return small_fashion_set(20, 10)

    benchmark_sets.SETS[name] = slow_set
    benchmark_sets.build_set(name, Path(out))


def test_two_processes_building_one_set_build_it_once(tmp_path):
    """Two `clipflow demo` runs (or two test workers) at once: one builds, the other waits
    and finds the set up to date. Without a lock both build into one fixed temporary
    folder, and one of them fails or leaves a set the other half-wrote."""
    log, out = tmp_path / "builds.log", tmp_path / "sets" / "slow"
    assert exit_codes_of_two_at_once(_build_in_a_child, "slow", str(out), str(log)) == [0, 0]
    assert len(log.read_text().split()) == 1  # built once
    info = read_dataset_info(str(out), needs_templates=True)
    assert info.classnames == list(FASHION_MNIST_CLASSNAMES)


def test_validation_set_holds_train_images_the_demo_web_never_shows(demo_web, tmp_path):
    from demo import offline_data
    from model.tario import open_samples

    bench = benchmark_sets.fashion_mnist_validation_set(demo_web.site_dir, per_class=30)
    benchmark_sets.write_set(tmp_path / "val", bench)
    train_x, train_y = offline_data.fashion_mnist("train")
    index_of = {pixels.tobytes(): i for i, pixels in enumerate(train_x)}
    # The web's own record of the train images it shows (planted.json), not the pixels the
    # builder compares: none of them may be a validation image.
    shown = {r["index"] for r in demo_web.planted["fashion"] if r["split"] == "train"}
    assert len(shown) == 10 * 20
    labels = []
    for shard in sorted((tmp_path / "val" / "test").glob("*.tar")):
        for sample in open_samples(str(shard), {}, ("png", "cls")):
            pixels = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("L"))
            index = index_of[pixels.tobytes()]  # a real Fashion-MNIST train image
            assert index not in shown
            assert int(sample["cls"]) == int(train_y[index])
            labels.append(int(sample["cls"]))
    assert sorted(collections.Counter(labels).values()) == [30] * 10
    # With room for every train image, each class holds its images less the recorded ones and
    # a few more: the spare train images the planted cases draw (not indexed in planted.json).
    everything = benchmark_sets.fashion_mnist_validation_set(demo_web.site_dir, per_class=6000)
    counts = collections.Counter(int(label) for *_, label in everything.splits[0].samples)
    shown_per_class = collections.Counter(int(train_y[i]) for i in shown)
    unrecorded = {c: 6000 - shown_per_class[c] - counts[c] for c in range(10)}
    assert all(n >= 0 for n in unrecorded.values()) and 0 < sum(unrecorded.values()) <= 60
