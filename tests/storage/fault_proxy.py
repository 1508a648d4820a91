"""A TCP proxy in front of moto_server that fires a callback when a chosen request passes.

It lets a test kill the real S3 server at an exact point of an upload (the request that
matched never reaches it) and hold the endpoint down while the server is restarted.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable


class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_port``; the first request whose bytes match
    ``pattern`` runs ``on_match`` and is dropped. While ``down`` is set, connections are
    closed unanswered (an endpoint that is not there).

    With ``every=True`` the proxy never goes down: every matching request is dropped (and
    counted in ``dropped``) while all others pass, as when one request keeps failing on the
    network while the server keeps its state."""

    def __init__(
        self,
        upstream_port: int,
        pattern: bytes,
        on_match: Callable[[], None] = lambda: None,
        every: bool = False,
    ) -> None:
        self.upstream_port = upstream_port
        self.pattern = re.compile(pattern)
        self.on_match = on_match
        self.every = every
        self.dropped = 0
        self.matched = threading.Event()
        self.down = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.down.is_set():
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, inspect: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if inspect and self._fires(tail + data):
                    break
                tail = data[-256:]
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _fires(self, data: bytes) -> bool:
        with self._lock:
            if (self.matched.is_set() and not self.every) or not self.pattern.search(data):
                return False
            self.matched.set()
            self.dropped += 1
            if self.every:
                return True
            self.down.set()
        self.on_match()
        return True
