"""The download stage on each img2dataset distributor, same URL list, same processes.

Serves N Fashion-MNIST PNGs on 127.0.0.1 (as ``bench_download.py``) and times the whole
stage, as a separate process, with ``download.distributor`` = multiprocessing, pyspark and
ray: the engine's start and stop are in the time, as they are in a run.

    .venv/bin/python bench/bench_distributors.py [--urls 3000] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_download import REPO, image_server, run_ours  # noqa: E402

DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")


def main() -> None:
    os.environ["CLIPFLOW_ALLOW_PRIVATE_NETWORKS"] = "1"  # the bench web is on loopback
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    server = image_server(args.urls)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    n = args.urls
    candidates = pd.DataFrame(
        {
            "url": [f"{base}/img/{i}.png" for i in range(n)],
            "caption": [f"fashion item number {i}" for i in range(n)],
            "page_url": [f"{base}/page.html"] * n,
            "source": ["bench"] * n,
            "crawl_time": [pd.Timestamp.now(tz="UTC")] * n,
        }
    )
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for distributor in DISTRIBUTORS:
            root = Path(tmp) / distributor
            times[distributor] = run_ours(
                candidates, root, args.processes, args.threads, distributor
            )
    server.shutdown()
    print(f"{'distributor':<18}{'wall s':>8}{'images/s':>10}")
    for distributor, seconds in times.items():
        print(f"{distributor:<18}{seconds:>8.1f}{n / seconds:>10.1f}")
    result = {"urls": n, "processes": args.processes, "threads": args.threads, "wall_s": times}
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributors.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
