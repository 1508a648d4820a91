"""Our download stage vs the raw img2dataset CLI, same URL list, same processes and threads.

Serves N real Fashion-MNIST images (PNG) from a threaded HTTP server on 127.0.0.1, then times,
alternately and as separate processes, `img2dataset ...` and our stage (`tasks.download.stage`:
candidate read, SSRF check, guarded fetch, accounting). Prints images/s and the ratio.

Then, in this process and one thread, the per-image cost of the guards: img2dataset's own
fetch (urllib, no deadline, no pinning) against ours (pinned connection, DNS check, one
deadline enforced by the watchdog, header size check), and the watchdog alone (watch +
unwatch of one socket).

    .venv/bin/python bench/bench_download.py [--urls 5000] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset would phone home

from demo.offline_data import fashion_mnist  # noqa: E402


def image_server(n: int) -> ThreadingHTTPServer:
    images, _ = fashion_mnist("train")
    bodies = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(images[i % len(images)]).save(buf, format="PNG")
        bodies.append(buf.getvalue())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            index = int(self.path.rsplit("/", 1)[1].split(".")[0])
            body = bodies[index]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_raw(url_list: Path, out: Path, processes: int, threads: int) -> float:
    exe = Path(sys.executable).with_name("img2dataset")
    started = time.perf_counter()
    subprocess.run(
        [str(exe), f"--url_list={url_list}", "--input_format=parquet", "--url_col=url",
         "--caption_col=caption", "--output_format=webdataset", f"--output_folder={out}",
         f"--processes_count={processes}", f"--thread_count={threads}", "--image_size=28",
         "--resize_mode=center_crop", "--encode_format=png", "--encode_quality=1",
         "--number_sample_per_shard=1000",
         "--timeout=10", "--enable_wandb=False"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def run_ours(
    candidates: pd.DataFrame,
    root: Path,
    processes: int,
    threads: int,
    distributor: str = "multiprocessing",
) -> float:
    cfg = {
        "storage": {"root": str(root)},
        "crawl": {"allow_private_networks": True},
        "download": {
            "processes_count": processes, "thread_count": threads, "image_size": 28,
            "resize_mode": "center_crop", "encode_format": "png",
            "number_sample_per_shard": 1000, "timeout": 10, "distributor": distributor,
        },
    }  # fmt: skip
    (root / "crawl").mkdir(parents=True)
    candidates.to_parquet(root / "crawl" / "candidates-00000.parquet")
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    code = (
        "import sys; from tasks.core.config import load_config; from tasks.download.stage import download;"
        "from tasks.core.storage import Storage; c = load_config(sys.argv[1]);"
        "print(download(c, Storage(c.storage)).counts)"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(config_path)], cwd=REPO, check=True)
    return time.perf_counter() - started


def fetch_costs(base: str, n: int) -> dict[str, float]:
    """Microseconds per image, one thread, same URLs: img2dataset's fetch against ours."""
    import socket

    from img2dataset.downloader import download_image

    from tasks.download.fetch import FetchPolicy, guarded_download_image
    from tasks.download.pinned_http import WATCHDOG

    policy = FetchPolicy(10.0, 50_000_000, 89_478_485, allow_private_networks=True)
    urls = [(i, f"{base}/img/{i}.png") for i in range(n)]
    costs: dict[str, float] = {}
    for name, fetch in (
        ("img2dataset_fetch_us", lambda row: download_image(row, 10, None, None)),
        ("clipflow_fetch_us", lambda row: guarded_download_image(row, 10, None, None, policy)),
    ):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for row in urls:
                assert fetch(row)[2] is None
            best = min(best, time.perf_counter() - started)
        costs[name] = best / n * 1e6
    sock = socket.socket()
    started = time.perf_counter()
    for _ in range(20_000):
        WATCHDOG.unwatch(WATCHDOG.watch(sock, time.monotonic() + 10))
    costs["watchdog_us"] = (time.perf_counter() - started) / 20_000 * 1e6
    sock.close()
    return costs


def main() -> None:
    # The bench web is on loopback: open the SSRF guard for it, as the demo does.
    os.environ["CLIPFLOW_ALLOW_PRIVATE_NETWORKS"] = "1"
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="500 URLs, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.urls, args.repeats = 500, 1
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
    raw_times, our_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        url_list = Path(tmp) / "urls.parquet"
        candidates[["url", "caption"]].to_parquet(url_list)
        for r in range(args.repeats):
            raw_times.append(run_raw(url_list, Path(tmp) / f"raw{r}", args.processes, args.threads))
            our_times.append(
                run_ours(candidates, Path(tmp) / f"ours{r}", args.processes, args.threads)
            )
    costs = fetch_costs(base, min(n, 1000))
    server.shutdown()
    raw_rate, our_rate = n / min(raw_times), n / min(our_times)
    result = {
        "urls": n, "processes": args.processes, "threads": args.threads,
        "img2dataset_images_per_s": raw_rate, "clipflow_images_per_s": our_rate,
        "ratio": our_rate / raw_rate, "raw_times": raw_times, "our_times": our_times,
        **costs,
    }  # fmt: skip
    print(f"{'':<22}{'images/s':>10}{'best wall s':>13}")
    print(f"{'img2dataset CLI':<22}{raw_rate:>10.1f}{min(raw_times):>13.2f}")
    print(f"{'clipflow download':<22}{our_rate:>10.1f}{min(our_times):>13.2f}")
    print(f"ratio clipflow / img2dataset: {result['ratio']:.3f} (target >= 0.95)")
    print(
        f"per image, one thread: img2dataset fetch {costs['img2dataset_fetch_us']:.0f} us, "
        f"guarded fetch {costs['clipflow_fetch_us']:.0f} us "
        f"(+{costs['clipflow_fetch_us'] - costs['img2dataset_fetch_us']:.0f} us); "
        f"of which the deadline watchdog {costs['watchdog_us']:.1f} us"
    )
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "download.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
