"""What a connect asks for of its MCP server, decoded from the wire once.

It is taken as the caller sent it. `ServerConfig.spec` makes its fields a `ServerSpec`;
what this worker's configuration allows (stdio names, the URL policy) is the session
manager's to check. The LLM a connect asks for is a `records.LLMChoice` from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

from llmservice.kernel.errors import InvalidRequest
from llmservice.service.sessions.mcp_client import ServerSpec, Transport

TRANSPORTS: tuple[Transport, ...] = ("streamable_http", "sse", "stdio")


@dataclass(frozen=True)
class ServerConfig:
    """The MCP server: an http(s) URL, or for stdio the name of a configured command."""

    url: str
    transport: str = "streamable_http"  # empty: streamable_http
    auth_token: str = ""  # sent to this server only; a stdio server gets none

    def spec(self) -> ServerSpec:
        """The server as a spec, or InvalidRequest naming the field at fault."""
        transport = self.transport or "streamable_http"
        if not _is_transport(transport):
            raise InvalidRequest("server.transport", f"{transport!r} is not one of {', '.join(TRANSPORTS)}")
        url = self.url.strip()
        if not url:
            raise InvalidRequest("server.url", "is required")
        return ServerSpec(url, transport, "" if transport == "stdio" else self.auth_token)


def _is_transport(name: str) -> TypeGuard[Transport]:
    return name in TRANSPORTS
