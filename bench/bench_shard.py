"""Shard-writing throughput on local disk vs the machine's sequential write speed (dd).

Synthetic input in the download stage's layout (incompressible 64 KiB "images" in
img2dataset-style tars, all kept by curate) is resharded by ``tasks.shard.stage.shard``; the peer
is ``dd if=/dev/zero ... conv=fdatasync`` of the same number of bytes to the same disk. The
stage reads every input, writes every shard (fsync'd, atomic), then reads every shard back
to verify it, so the ratio is a floor on the writing itself; verify is timed alone too.

    .venv/bin/python bench/bench_shard.py [--quick]

Writes bench/results/shard.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.tario import SampleWriter  # noqa: E402
from tasks.core.config import PipelineConfig  # noqa: E402
from tasks.core.storage import Storage  # noqa: E402
from tasks.shard.stage import shard, verify_shards  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "shard.json"
IMAGE_BYTES = 64 * 1024
PER_INPUT_TAR = 500


def make_inputs(root: Path, samples: int) -> None:
    """download/NNNNN.tar with {key}.jpg/.txt, curate/samples.parquet (with each image's
    sha256, as curate records it), curate manifest."""
    (root / "download").mkdir(parents=True)
    rows = []
    for start in range(0, samples, PER_INPUT_TAR):
        tar_name = f"{start // PER_INPUT_TAR:05d}.tar"
        with open(root / "download" / tar_name, "wb") as stream, SampleWriter(stream) as tar:
            for i in range(start, min(start + PER_INPUT_TAR, samples)):
                key, image = f"{i:09d}", os.urandom(IMAGE_BYTES)
                tar.write(key, {"jpg": image, "txt": b"a caption"})
                sha256 = hashlib.sha256(image).hexdigest()
                rows.append((key, f"http://example.com/{key}.jpg", "a caption", tar_name, sha256))
    columns = ["key", "url", "caption", "download_shard", "image_sha256"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.assign(page_url="http://example.com/", source="bench", keep=True, clip_score=0.3)
    (root / "curate").mkdir()
    frame.to_parquet(root / "curate" / "samples.parquet", index=False)
    (root / "_manifests").mkdir()
    manifest = {"stage": "curate", "counts": {"input": samples, "kept": samples}}
    (root / "_manifests" / "curate.json").write_text(json.dumps(manifest))


def dd_seconds(path: Path, megabytes: int) -> float:
    """Wall seconds of a sequential, fdatasync'd write of ``megabytes`` MiB."""
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={megabytes}", "conv=fdatasync"],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 samples instead of 4000")
    args = parser.parse_args()
    samples = 500 if args.quick else 4000
    with tempfile.TemporaryDirectory(prefix="bench-shard-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp) / "root"
        make_inputs(root, samples)
        cfg = PipelineConfig.model_validate(
            {"storage": {"root": str(root)}, "shard": {"samples_per_shard": 250}}
        )
        storage = Storage(cfg.storage)
        started = time.perf_counter()
        result = shard(cfg, storage)
        stage_s = time.perf_counter() - started
        started = time.perf_counter()
        assert verify_shards(storage).ok
        verify_s = time.perf_counter() - started
        out_bytes = int(result.extra["bytes"])
        dd_s = dd_seconds(Path(tmp) / "dd.bin", max(1, round(out_bytes / 2**20)))
    mb = out_bytes / 1e6
    rows = {
        "dd sequential write (fdatasync)": mb / dd_s,
        "shard stage (read+write+fsync+verify)": mb / stage_s,
        "verify alone (read back + sha256)": mb / verify_s,
    }
    dd_rate = rows["dd sequential write (fdatasync)"]
    print(f"{samples} samples, {result.counts['shards']} shards, {mb:.0f} MB written")
    print(f"{'':40s} {'MB/s':>8s} {'vs dd':>7s}")
    for name, rate in rows.items():
        print(f"{name:40s} {rate:8.1f} {rate / dd_rate:6.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "samples": samples,
                "shards": result.counts["shards"],
                "megabytes": round(mb, 1),
                "mb_per_s": {
                    re.sub(r"\W+", "_", k).strip("_"): round(v, 1) for k, v in rows.items()
                },
                "ratio_stage_vs_dd": round(
                    rows["shard stage (read+write+fsync+verify)"] / dd_rate, 3
                ),
                "note": "shared 2-core machine; other agents were running",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
