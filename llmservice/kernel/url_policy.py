"""Which URLs the service may fetch on a caller's behalf: http(s) only, no link-local or
metadata endpoints, no loopback or private networks unless an operator setting allows them.

A URL's host is resolved and every address it resolves to is checked, so a public name
that points at 169.254.169.254 is refused like the address itself. Chat sessions vet MCP
servers and their own providers' base URLs with it (llmchat.allowed_hosts), model pulls
vet every hop of a download (llamacpp.pull_allowed_hosts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from llmservice.kernel.errors import InvalidRequest, PermissionDenied

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_AddrInfo = Sequence[tuple[Any, ...]]  # what getaddrinfo gives: the address is item 4's first

# Cloud metadata services: refused even when an allow-list would admit their network.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})


class UrlPolicy:
    def __init__(self, allowed_hosts: Iterable[str], setting: str) -> None:
        """`allowed_hosts`: names, addresses or networks (CIDR) let through although local;
        `setting`: where an operator lists them, named when a URL is refused."""
        hosts = list(allowed_hosts)
        self._names = {h.lower() for h in hosts if not _is_network(h)}
        self._networks: list[Network] = [
            ipaddress.ip_network(h, strict=False) for h in hosts if _is_network(h)
        ]
        self._setting = setting

    async def check(self, url: str, field: str = "server.url") -> None:
        """Raise unless `url` is an http(s) URL whose every address may be reached; the
        error names `field`."""
        host = self._host(url, field)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise InvalidRequest(field, f"host {host!r} does not resolve") from None
        self._check_addresses(field, host, infos)

    def check_blocking(self, url: str, field: str) -> None:
        """`check`, for a thread that may block on the lookup (a download's, say)."""
        host = self._host(url, field)
        try:
            infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise InvalidRequest(field, f"host {host!r} does not resolve") from None
        self._check_addresses(field, host, infos)

    def _host(self, url: str, field: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(field, f"{url!r} is not an http:// or https:// URL")
        host = parts.hostname.lower()
        if host in METADATA_NAMES:
            raise PermissionDenied(f"{field}: {host} is a cloud metadata endpoint")
        return host

    def _check_addresses(self, field: str, host: str, infos: _AddrInfo) -> None:
        for info in infos:
            self._check_address(field, host, ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))

    def _check_address(self, field: str, host: str, address: Address) -> None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address in METADATA:
            raise PermissionDenied(f"{field}: {host} is a cloud metadata endpoint")
        if host in self._names or any(address in n for n in self._networks):
            return
        if address.is_link_local:
            raise PermissionDenied(f"{field}: {host} is a link-local address")
        if (
            address.is_loopback
            or address.is_private
            or address.is_unspecified
            or address.is_multicast
            or address.is_reserved
        ):
            raise PermissionDenied(
                f"{field}: {host} is a loopback, private or reserved address; "
                f"allow it with {self._setting} for local development"
            )


def _is_network(host: str) -> bool:
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        return False
    return True
