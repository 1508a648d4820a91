"""Run the crawl stage once in this (fresh) process and print its peak RSS and counts as JSON.

``python -m tests.crawl.memory_probe CONFIG_JSON``: the memory tests start it as a child so
the peak belongs to one crawl alone (servers and generated inputs stay in the parent).
"""

from __future__ import annotations

import json
import resource
import sys

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.crawl.stage import crawl


def main() -> None:
    cfg = PipelineConfig.model_validate(json.loads(sys.argv[1]))
    result = crawl(cfg, Storage(cfg.storage))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_mib": peak_kib / 1024, "counts": result.counts}))


if __name__ == "__main__":
    main()
