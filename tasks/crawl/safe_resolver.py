"""``GuardedResolver``: the SSRF guard (``tasks.core.safe_http``) at connect time, for aiohttp.

Every connection the async crawler opens, redirect hops included, resolves its host through
this resolver, which refuses names resolving to non-public addresses: the check is made on
the address actually used, so there is no window for DNS rebinding between check and
connect.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from tasks.core.safe_http import AddressRefused, parse_ip, refuse_address


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses host names resolving to non-public addresses.

    aiohttp raises the AddressRefused wrapped in ``ClientConnectorDNSError`` (its
    ``os_error``). ``resolve`` may be replaced (tests map a name onto 127.0.0.1 with it).
    """

    def __init__(
        self,
        allow_private: bool,
        exempt: Collection[str] = (),
        resolve: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.exempt = frozenset(exempt)
        self._resolve = resolve
        self._threaded = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The host's addresses, or AddressRefused when any of them is not public."""
        results = await self._lookup(host, port, family)
        if self.allow_private or f"{host.lower()}:{port}" in self.exempt:
            return results
        for result in results:
            refused = refuse_address(host, parse_ip(result["host"]), self.allow_private)
            if refused is not None:
                raise AddressRefused(refused.detail)
        return results

    async def _lookup(
        self, host: str, port: int, family: socket.AddressFamily
    ) -> list[ResolveResult]:
        if self._resolve is None:
            return await self._threaded.resolve(host, port, family)
        return [_result(host, address, port) for address in self._resolve(host)]

    async def close(self) -> None:
        """Release the wrapped resolver."""
        await self._threaded.close()


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    fields: dict[str, Any] = {
        "hostname": host, "host": address, "port": port, "family": family,
        "proto": 0, "flags": socket.AI_NUMERICHOST,
    }  # fmt: skip
    return ResolveResult(**fields)  # type: ignore[typeddict-item]
