"""One live connection to an MCP server, through the official `mcp` SDK.

The SDK's client lives inside task groups that must be entered and left by one task,
while a session's turns come from many. So each connection has a task of its own that
enters the client, lists the tools (handing them to `open` through a future), then
holds the client open until `aclose`; turns call tools on that client directly, each
call under the tool timeout. Transports: streamable HTTP, SSE (with `auth_token` as a
Bearer header, sent to that server only) and stdio (a configured command run as a
subprocess). HTTP goes through httpx2, the client the SDK's transports take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from llmservice.kernel.errors import DeadlineExceeded, LLMServiceError, Unauthenticated, Unavailable
from llmservice.kernel.types import Tool

log = logging.getLogger(__name__)

Transport = Literal["streamable_http", "sse", "stdio"]


@dataclass(frozen=True)
class ServerSpec:
    url: str  # http(s) URL, or for stdio the name of a configured command
    transport: Transport
    auth_token: str = ""
    argv: tuple[str, ...] = ()  # stdio: the command line the configuration gives for `url`


@dataclass(frozen=True)
class ToolOutcome:
    text: str
    is_error: bool


class McpConnection:
    def __init__(self, spec: ServerSpec, *, connect_timeout_s: float, tool_timeout_s: float) -> None:
        self.spec = spec
        self._connect_timeout_s, self._tool_timeout_s = connect_timeout_s, tool_timeout_s
        self._client: Client | None = None
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refused: int | None = None  # an HTTP 401 or 403 seen from the server
        self.tools: tuple[Tool, ...] = ()

    @property
    def alive(self) -> bool:
        return self._client is not None and self._task is not None and not self._task.done()

    async def open(self) -> tuple[Tool, ...]:
        """Connect and list the tools; raise a domain error saying why it could not."""
        ready: asyncio.Future[tuple[Tool, ...]] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name=f"mcp {self.spec.url}")
        try:
            self.tools = await asyncio.wait_for(asyncio.shield(ready), self._connect_timeout_s)
        except TimeoutError:
            await self.aclose()
            raise self._error(
                Unavailable(f"MCP server {self.spec.url} did not answer within {self._connect_timeout_s:g} s")
            ) from None
        except BaseException:
            await self.aclose()
            raise
        return self.tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Run one tool; a tool that fails or times out is an outcome, not an exception."""
        if self._client is None or not self.alive:
            raise Unavailable(f"MCP server {self.spec.url} is no longer connected")
        try:
            result = await asyncio.wait_for(self._client.call_tool(name, arguments), self._tool_timeout_s)
        except TimeoutError:
            return ToolOutcome(f"tool {name} did not finish within {self._tool_timeout_s:g} s", True)
        except Exception as exc:  # an error answer from the server: the tool failed
            if not self.alive:
                raise self._error(exc) from None
            return ToolOutcome(f"tool {name} failed: {_describe(exc)}", True)
        return ToolOutcome(_text_of(result.content, result.structured_content), result.is_error)

    async def aclose(self) -> None:
        self._closing.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        self._task, self._client = None, None

    async def _run(self, ready: asyncio.Future[tuple[Tool, ...]]) -> None:
        """Hold the SDK's client open, in this one task, until aclose."""
        try:
            async with Client(self._transport()) as client:
                tools = await _list_tools(client)
                self._client = client
                ready.set_result(tools)
                await self._closing.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(self._error(exc))
            if not isinstance(exc, Exception):
                raise
            log.info("MCP connection to %s ended: %s", self.spec.url, _describe(exc))
        finally:
            self._client = None

    def _transport(self) -> Any:
        spec = self.spec
        if spec.transport == "stdio":
            return stdio_client(StdioServerParameters(command=spec.argv[0], args=list(spec.argv[1:])))
        headers = {"Authorization": f"Bearer {spec.auth_token}"} if spec.auth_token else {}

        def http(
            headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None, auth: Any = None
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                headers=headers,
                timeout=timeout or httpx2.Timeout(self._connect_timeout_s, read=300),
                auth=auth,
                event_hooks={"response": [self._note_refusal]},
            )

        if spec.transport == "sse":
            return sse_client(
                spec.url, headers=headers, timeout=self._connect_timeout_s, httpx_client_factory=http
            )
        client = http(headers)
        return _owning(client, streamable_http_client(spec.url, http_client=client))

    async def _note_refusal(self, response: httpx2.Response) -> None:
        # The SDK reports a 401 as a generic error; remember it to say what happened.
        if response.status_code in (401, 403):
            self._refused = response.status_code

    def _error(self, exc: BaseException) -> LLMServiceError:
        if self._refused is not None:
            return Unauthenticated(
                f"MCP server {self.spec.url} refused the session's credentials "
                f"(HTTP {self._refused}); check auth_token"
            )
        for e in _leaves(exc):
            if isinstance(e, LLMServiceError):
                return e
            if isinstance(e, httpx2.TimeoutException):
                return DeadlineExceeded(f"MCP server {self.spec.url} did not answer in time")
        return Unavailable(f"MCP server {self.spec.url} is unreachable or failed: {_describe(exc)}")


@contextlib.asynccontextmanager
async def _owning(http: httpx2.AsyncClient, transport: Any) -> AsyncIterator[Any]:
    async with http, transport as streams:
        yield streams


async def _list_tools(client: Client) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a server whose pages never end cannot hang a connect
        page = await client.list_tools(cursor=cursor)
        tools += [
            Tool(t.name, t.description or "", json.dumps(t.input_schema or {"type": "object"}))
            for t in page.tools
        ]
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(tools)


def _text_of(content: list[Any], structured: Any) -> str:
    parts = []
    for block in content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')}]")
    if not parts and structured is not None:
        return json.dumps(structured)
    return "\n".join(parts)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes, and everything inside exception groups."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        for linked in (e.__cause__, e.__context__):
            if linked is not None:
                stack.append(linked)


def _describe(exc: BaseException) -> str:
    """The most telling message in an exception tree: a network error first, never a cancellation."""
    leaves = [
        e for e in _leaves(exc) if not isinstance(e, (BaseExceptionGroup, asyncio.CancelledError)) and str(e)
    ]
    leaves.sort(key=lambda e: not isinstance(e, (httpx2.HTTPError, OSError)))
    e = leaves[0] if leaves else exc
    return str(e) or type(e).__name__
