"""Prefect's temporary server, for the ``clipflow`` commands run without a Prefect server.

Without ``PREFECT_API_URL`` Prefect starts a temporary server at the first flow call: a
subprocess that imports the server app, ~4.5 s on the 2-core machine, while the command
waits. Two things make that cheaper here:

- **Booted in the background.** ``start_in_background`` starts it in a thread at once, so
  it boots on the other core while the command imports its flows (``flows.pipeline`` takes
  ~10 s to import: great_expectations, torch, FAISS). ``TemporaryServer.wait`` then joins the
  thread before the first flow call. A boot that failed is left to Prefect, which starts the
  server again at that call and reports its own error.
- **No flow-run heartbeats on it.** Prefect 3.9 runs a heartbeat thread per flow run that
  sleeps in 1 s steps; a run that ends waits for it to wake, up to 1 s per stage subflow and
  again for the pipeline's flow. Heartbeats let a server's automations find crashed runs
  (zombie flow detection); a temporary server lives and dies with the one process whose runs
  it records, so nothing watches them there. ``without_heartbeats`` turns them off for the
  flows a command runs on the temporary server only: against a server of your own they stay
  as configured. (``bench/bench_prefect_overhead.py`` measures both.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

log = logging.getLogger(__name__)


def uses_temporary_server() -> bool:
    """Whether a flow call here would start Prefect's temporary server: no API URL is set
    (environment or profile) and the temporary server is allowed."""
    settings = get_current_settings()
    return not settings.api.url and settings.server.ephemeral.enabled


class TemporaryServer:
    """The temporary server's boot, in a daemon thread (``start_in_background``); nothing
    when a server is configured."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if uses_temporary_server():
            self._thread = threading.Thread(target=self._start, name="prefect-server",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _start(self) -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            # The instance Prefect's client uses too (one per port; None: any free port).
            SubprocessASGIServer().start()
        except BaseException as e:  # the flow call starts it again and reports its own error
            self.error = e

    def wait(self) -> None:
        """Block until the server answers (or its start failed: then the first flow call
        starts it again, as Prefect would have)."""
        if self._thread is None:
            return
        self._thread.join()
        if self.error is not None:
            log.warning("the temporary Prefect server did not start in the background "
                        "(%s: %s); the first flow call starts it", type(self.error).__name__,
                        self.error)  # fmt: skip


def start_in_background() -> TemporaryServer:
    """Start the temporary server now, in a thread, when flows here would use it."""
    return TemporaryServer()


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Flow runs inside send no heartbeats, when they run on the temporary server."""
    if not uses_temporary_server():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
