"""What the curate stage's mapped search tasks share: arrays handed over as ``.npy`` files
(any fsspec URI), read whole or a range of rows at a time, and the task's peak resident
memory."""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np


def save_array(uri: str, array: np.ndarray) -> None:
    with fsspec.open(uri, "wb") as fh:
        np.save(fh, array)


def load_array(uri: str) -> np.ndarray:
    with fsspec.open(uri, "rb") as fh:
        return np.load(fh)


def _header(fh: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    major, _ = np.lib.format.read_magic(fh)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(fh)
    if fortran:
        raise ValueError("row reads need a C-ordered .npy file")
    return shape, dtype


def array_rows(uri: str) -> int:
    """How many rows the ``.npy`` file holds (reads its header only)."""
    with fsspec.open(uri, "rb") as fh:
        return _header(fh)[0][0]


def read_rows(uri: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a C-ordered ``.npy`` file, read by seeking: only those rows
    come into memory (a memory map would keep every page it touched resident)."""
    with fsspec.open(uri, "rb") as fh:
        shape, dtype = _header(fh)
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        stop = min(stop, shape[0])
        fh.seek(fh.tell() + start * row_bytes)
        data = fh.read(max(0, stop - start) * row_bytes)
    return np.frombuffer(data, dtype=dtype).reshape(-1, *shape[1:]).copy()


def _resident_kib(field: str) -> int:
    """VmRSS / VmHWM of this process (KiB), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    """Start VmHWM afresh at the current resident size (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class PeakMemory:
    """Peak resident memory growth over a ``with`` block (bytes, in ``grown``): exact in a
    fresh process, 0 where /proc is missing."""

    grown = 0

    def __enter__(self) -> PeakMemory:
        _reset_peak()
        self._before = _resident_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.grown = max(0, _resident_kib("VmHWM") - self._before) * 1024
