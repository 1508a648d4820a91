"""``metrics.jsonl`` (one JSON object per logged step) and the loss-curve PNG, on rank 0.

Locally each record is appended as it is logged; on object stores (no append) the whole
file is rewritten at every checkpoint and at the end. On resume the records after the
checkpoint's step are dropped, so the curve continues the run that was interrupted rather
than repeating steps.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from typing import Any

import fsspec

from model.atomic import write_atomic
from model.train_checkpoint import filesystem, is_local

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"


def read_metrics(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (empty when the file does not exist)."""
    fs, path = filesystem(uri, storage_options or {})
    if not fs.exists(path):
        return []
    with fsspec.open(uri, "rt", encoding="utf-8", **(storage_options or {})) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Appends records to ``{output}/metrics.jsonl``; keeps them for the loss curve."""

    def __init__(self, output: str, storage_options: dict[str, Any], resume_step: int) -> None:
        self.uri = posixpath.join(output, METRICS_FILE)
        self.output = output
        self.storage_options = storage_options
        fs, self._path = filesystem(self.uri, storage_options)
        self._local = is_local(fs)
        kept = [r for r in read_metrics(self.uri, storage_options) if r["step"] <= resume_step]
        self.records: list[dict[str, Any]] = kept
        self.sync()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._local:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def sync(self) -> None:
        """Write every record (atomically); needed on object stores, harmless locally."""
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        write_atomic(text.encode(), self.uri, self.storage_options)

    def plot(self) -> str:
        """Write the loss curve (loss and learning rate against step); returns its URI."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
        loss_ax.plot(steps, [r["loss"] for r in self.records], color="tab:blue", label="loss")
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("contrastive loss", color="tab:blue")
        lr_ax = loss_ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in self.records], color="tab:orange", alpha=0.6)
        lr_ax.set_ylabel("learning rate", color="tab:orange")
        loss_ax.set_title("training loss")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        uri = posixpath.join(self.output, LOSS_CURVE_FILE)
        write_atomic(buffer.getvalue(), uri, self.storage_options)
        return uri
