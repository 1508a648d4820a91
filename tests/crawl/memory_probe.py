"""Run the crawl stage once in this (fresh) process and print its peak RSS and counts as JSON.

``python -m tests.crawl.memory_probe CONFIG_JSON``: the memory tests start it as a child so
the peak belongs to one crawl alone (servers and generated inputs stay in the parent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.crawl.stage import crawl
from tasks.crawl.wat import ArchiveInputError


def main() -> None:
    cfg = PipelineConfig.model_validate(json.loads(sys.argv[1]))
    try:
        out: dict[str, Any] = {"counts": crawl(cfg, Storage(cfg.storage)).counts}
    except ArchiveInputError as e:  # an archive refused: the test wants the reason too
        out = {"refused": str(e)}
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), **out}))


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not ``getrusage``'s ``ru_maxrss``: Linux carries that
    across exec, so a child started from a large parent (a long pytest run) reports at least
    the parent's size. ``VmHWM`` belongs to the address space this interpreter was given."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
