"""Training shards from real images, in the shard stage's layout (``000000.tar`` ... with
``{key}.jpg``/``.txt``/``.json``, ``sizes.json``): Fashion-MNIST with class-name captions,
and web-sized images for loader benchmarks (``write_web_shards``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Collection
from pathlib import Path

from PIL import Image

from demo.offline_data import FASHION_MNIST_CLASSES, clipart, emoji, fashion_mnist
from model.tario import SampleWriter

TEMPLATES = ("a photo of a {}", "a {}", "a picture of a {}", "a product photo of a {}")


def caption(label: int, index: int) -> str:
    return TEMPLATES[index % len(TEMPLATES)].format(FASHION_MNIST_CLASSES[label])


def write_fashion_shards(
    folder: Path,
    samples: int,
    per_shard: int,
    corrupt: Collection[int] = (),
    offset: int = 0,
    size: int = 28,
) -> dict[str, int]:
    """Write ``samples`` Fashion-MNIST training images as JPEG shards (resized to ``size``
    pixels); samples whose index is in ``corrupt`` get bytes that no image decoder accepts.
    Returns sizes.json's content."""
    images, labels = fashion_mnist("train")

    def sample(i: int) -> dict[str, bytes]:
        buf = io.BytesIO()
        image = Image.fromarray(images[offset + i])
        if size != image.width:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        image.save(buf, format="JPEG", quality=95)
        label = int(labels[offset + i])
        return {
            "jpg": b"\xff\xd8 not really a jpeg" if i in corrupt else buf.getvalue(),
            "txt": caption(label, i).encode(),
            "json": json.dumps({"label": label}).encode(),
        }

    return _write_shards(folder, samples, per_shard, sample)


def _write_shards(
    folder: Path, samples: int, per_shard: int, sample: Callable[[int], dict[str, bytes]]
) -> dict[str, int]:
    """Samples ``0..samples-1`` (``sample(i)``: its members) under keys ``{i:09d}``,
    ``per_shard`` to a tar, and sizes.json; returns sizes.json's content."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for start in range(0, samples, per_shard):
        name = f"{start // per_shard:06d}.tar"
        count = min(per_shard, samples - start)
        with open(folder / name, "wb") as stream, SampleWriter(stream) as sink:
            for i in range(start, start + count):
                sink.write(f"{i:09d}", sample(i))
        sizes[name] = count
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return sizes


def web_image(image: Image.Image, size: int) -> Image.Image:
    """``image`` as img2dataset's ``center_crop`` writes it (``configs/production.yaml``):
    RGB (transparency on white), short side resized to ``size``, centre-cropped square."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def write_web_shards(
    folder: Path,
    samples: int,
    per_shard: int,
    size: int = 256,
    qualities: tuple[int, ...] = (75, 80, 85, 90),
) -> dict[str, int]:
    """``samples`` real images at web size as JPEG shards, for loader benchmarks at 224 px:
    clipart, emoji and Fashion-MNIST in turn (``demo.offline_data``), upscaled to ``size``
    px squares the way the download stage stores them (``web_image``) and re-encoded at a
    web-typical JPEG quality (``qualities`` in turn; 4:2:0 chroma, as most web JPEGs).
    Returns sizes.json's content."""
    arts = clipart(limit=max(1, samples // 3 + 1))
    emojis = emoji()
    fashion, labels = fashion_mnist("train")

    def sample(i: int) -> dict[str, bytes]:
        kind, j = i % 3, i // 3
        if kind == 0:
            path, text = arts[j % len(arts)]
            with Image.open(path) as source:
                image = web_image(source, size)
        elif kind == 1:
            e = emojis[j % len(emojis)]
            with Image.open(e.path) as source:
                image = web_image(source, size)
            text = f"{e.name} emoji"
        else:
            image = web_image(Image.fromarray(fashion[j % len(fashion)]), size)
            text = caption(int(labels[j % len(labels)]), j)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=qualities[i % len(qualities)])
        return {"jpg": buf.getvalue(), "txt": text.encode()}

    return _write_shards(folder, samples, per_shard, sample)
