"""Near-duplicate matching: the stored hash keeps its bits, the matcher finds planted copies
and keeps look-alikes apart (on a small fixed sample of the quality harness)."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from demo.offline_data import fashion_mnist
from tasks.curate.features import FEATURE_SCHEMA, inspect_image
from tasks.curate.phash import phash64


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _stored_hash(value: object) -> int:
    """A phash cell as read back, as the unsigned 64-bit integer it stands for."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value) & 0xFFFFFFFFFFFFFFFF  # type: ignore[call-overload]


def test_hash_column_round_trips_exactly_through_parquet(tmp_path):
    images, _ = fashion_mnist("test")
    pictures = [Image.fromarray(images[k]) for k in range(50)]
    infos = [inspect_image(_png(p)) for p in pictures]
    expected = [phash64(p) & 0xFFFFFFFFFFFFFFFF for p in pictures]
    assert sum(h >= 1 << 63 for h in expected) > 0  # the top bit is in use
    phash_type = FEATURE_SCHEMA.field("phash").type
    column = pa.array([info.phash for info in infos] + [None], phash_type)  # no image: NULL
    assert not pa.types.is_floating(phash_type)
    path = tmp_path / "features.parquet"
    pq.write_table(pa.table({"phash": column}), path)
    assert pq.read_table(path).column("phash").type == phash_type
    for read in (pq.read_table(path).column("phash").to_pylist(),
                 pd.read_parquet(path)["phash"].tolist()):  # fmt: skip
        assert read[-1] is None or pd.isna(read[-1])
        assert [_stored_hash(v) for v in read[:-1]] == expected
