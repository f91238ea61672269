"""The MCP servers an operator offers (llmchat.servers), each probed for reachability.

A probe connects the way a session would (same transports, same URL policy, stdio only
for configured commands), lists the tools, and closes. Servers that need a token are
probed without one: a refusal then still proves the server is up. Probes run
concurrently, each bounded by the probe timeout, and their results are kept for
`probe_ttl_s` so a page that lists the catalogue often does not reconnect each time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from llmservice.kernel.errors import LLMServiceError, Unauthenticated
from llmservice.service.sessions.mcp_client import McpConnection, ServerSpec
from llmservice.service.sessions.safety import UrlPolicy
from llmservice.service.settings import LLMChatSettings

Status = Literal["active", "needs_token", "unreachable"]


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    description: str
    url: str
    transport: str
    requires_token: bool
    status: Status
    tools: tuple[str, ...] = ()
    error: str = ""  # why it is unreachable, or what the server said when refusing


class ServerCatalogue:
    def __init__(self, settings: LLMChatSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._urls = UrlPolicy(settings.allowed_hosts)
        self._clock = clock
        self._cached: tuple[float, list[CatalogueEntry]] | None = None
        self._lock = asyncio.Lock()

    async def entries(self, *, refresh: bool = False) -> list[CatalogueEntry]:
        """Every configured server with its status; probed again when stale or asked to."""
        async with self._lock:  # one round of probes at a time; callers meanwhile share it
            cached = self._cached
            if cached is not None and not refresh and self._clock() - cached[0] < self._settings.probe_ttl_s:
                return cached[1]
            entries = list(await asyncio.gather(*(self._probe(n) for n in self._settings.servers)))
            self._cached = (self._clock(), entries)
            return entries

    async def _probe(self, name: str) -> CatalogueEntry:
        server = self._settings.servers[name]

        def entry(status: Status, tools: tuple[str, ...] = (), error: str = "") -> CatalogueEntry:
            return CatalogueEntry(
                name,
                server.description,
                server.url,
                server.transport,
                server.requires_token,
                status,
                tools,
                error,
            )

        argv: tuple[str, ...] = ()
        try:
            if server.transport == "stdio":
                argv = tuple(self._settings.stdio_servers[server.url])
            else:
                await self._urls.check(server.url)
            connection = McpConnection(
                ServerSpec(server.url, server.transport, "", argv),
                connect_timeout_s=self._settings.probe_timeout_s,
                tool_timeout_s=self._settings.tool_timeout_s,
            )
            tools = await connection.open()
            await connection.aclose()
        except Unauthenticated as exc:
            return entry("needs_token", error=str(exc))
        except LLMServiceError as exc:
            return entry("unreachable", error=str(exc))
        return entry("active", tuple(t.name for t in tools))
