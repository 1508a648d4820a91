"""S3 upload throughput through our storage layer vs plain ``boto3 upload_file``.

The same local files go to the same moto_server on 127.0.0.1, alternating ours and the
peer each round; the median of the rounds is reported. Ours is ``Storage.write_file``
(``model.s3``: SHA-256-checksummed parts, parallel, verified, retried); the peer is boto3's
``S3Transfer`` with its defaults (8 MiB parts, 10 threads, CRC32 checksums). Target: >= 0.9x.

    .venv/bin/python bench/bench_s3.py [--quick]

Writes bench/results/s3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.core.config import ShardConfig, StorageConfig  # noqa: E402
from tasks.core.storage import Storage  # noqa: E402
from tasks.shard.stage import upload_policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "s3.json"
BUCKET = "bench"


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def timed(upload, files: list[Path], prefix: str) -> float:
    started = time.perf_counter()
    for i, path in enumerate(files):
        upload(path, f"{prefix}/{i:04d}.tar")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x 12 MiB instead of 8 x 24 MiB")
    args = parser.parse_args()
    count, size = (4, 12 * 2**20) if args.quick else (8, 24 * 2**20)
    rounds = 3
    # moto accepts any credentials; these exist only for this run.
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    proc, endpoint = start_moto()
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        storage = Storage(
            StorageConfig(root=f"s3://{BUCKET}/ours", s3_endpoint_url=endpoint),
            upload=upload_policy(ShardConfig()),
        )
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
            files = [Path(tmp) / f"{i}.bin" for i in range(count)]
            for f in files:
                f.write_bytes(os.urandom(size))
            ours, peer = [], []
            for _ in range(rounds):
                ours.append(
                    timed(lambda p, k: storage.write_file(str(p), storage.uri(k)), files, "r")
                )
                peer.append(
                    timed(lambda p, k: client.upload_file(str(p), BUCKET, f"peer/{k}"), files, "r")
                )
    finally:
        proc.kill()
        proc.wait()
    megabytes = count * size / 1e6
    ours_rate, peer_rate = megabytes / statistics.median(ours), megabytes / statistics.median(peer)
    print(f"{count} files x {size / 2**20:.0f} MiB to moto_server, median of {rounds} rounds")
    print(f"{'':34s} {'MB/s':>8s} {'ratio':>7s}")
    print(f"{'boto3 upload_file (peer)':34s} {peer_rate:8.1f} {1.0:6.2f}x")
    print(f"{'clipflow Storage.write_file':34s} {ours_rate:8.1f} {ours_rate / peer_rate:6.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "files": count,
                "file_mib": size / 2**20,
                "rounds": rounds,
                "seconds": {"ours": ours, "boto3_upload_file": peer},
                "mb_per_s": {"ours": round(ours_rate, 1), "boto3_upload_file": round(peer_rate, 1)},
                "ratio": round(ours_rate / peer_rate, 3),
                "target": 0.9,
                "note": "shared 2-core machine; other agents were running",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
