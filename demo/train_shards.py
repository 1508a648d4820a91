"""Training shards from real images: Fashion-MNIST with class-name captions, in the shard
stage's layout (``000000.tar`` ... with ``{key}.jpg``/``.txt``/``.json``, ``sizes.json``)."""

from __future__ import annotations

import io
import json
from collections.abc import Collection
from pathlib import Path

from PIL import Image

from demo.offline_data import FASHION_MNIST_CLASSES, fashion_mnist
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
    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for start in range(0, samples, per_shard):
        name = f"{start // per_shard:06d}.tar"
        count = min(per_shard, samples - start)
        with open(folder / name, "wb") as stream, SampleWriter(stream) as sink:
            for i in range(start, start + count):
                buf = io.BytesIO()
                image = Image.fromarray(images[offset + i])
                if size != image.width:
                    image = image.resize((size, size), Image.Resampling.BICUBIC)
                image.save(buf, format="JPEG", quality=95)
                data = b"\xff\xd8 not really a jpeg" if i in corrupt else buf.getvalue()
                label = int(labels[offset + i])
                sink.write(
                    f"{i:09d}",
                    {
                        "jpg": data,
                        "txt": caption(label, i).encode(),
                        "json": json.dumps({"label": label}).encode(),
                    },
                )
        sizes[name] = count
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return sizes
