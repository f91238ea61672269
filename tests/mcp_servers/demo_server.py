"""A small MCP server written with the `mcp` SDK, for the chat-session tests.

`python -m tests.mcp_servers.demo_server --port N [--token T] [--transport sse] [--only TOOL]`
serves streamable HTTP at /mcp (or SSE at /sse). With a token, every request must
carry `Authorization: Bearer T` or gets a 401. Tools: `add`, `get_weather`, `slow`
(sleeps), and `fail`, which always fails on purpose.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

server = MCPServer("demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is 21 degrees and sunny in {city}."


@server.tool()
async def slow(seconds: float) -> str:
    """Wait, then say so."""
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    # A failure the tool anticipates: its message reaches the client (any other exception
    # is a crash, which the SDK reports as "Error executing tool fail" and nothing more).
    raise ToolError(f"failed on purpose: {reason}")


class BearerOnly:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {self.token}".encode():
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain")],
                    }
                )
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--transport", choices=("streamable_http", "sse"), default="streamable_http")
    parser.add_argument("--only", action="append", help="offer only this tool (repeatable)")
    args = parser.parse_args()
    for name in ("add", "get_weather", "slow", "fail"):
        if args.only and name not in args.only:
            server.remove_tool(name)
    app: ASGIApp = server.sse_app() if args.transport == "sse" else server.streamable_http_app()
    if args.token:
        app = BearerOnly(app, args.token)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
