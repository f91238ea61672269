"""A local server that answers with a vendor's recorded fixtures, byte for byte.

Every call is recorded (`Received`) and first shown to the vendor's `gate`, which answers
what the vendor itself would answer a request it refuses (a missing version header, a
field the model does not take), in the vendor's own error shape, or answers calls the
fixtures do not hold (an IAM token exchange). Otherwise the call gets the next fixture of
the script; the last one repeats. A fixture is one JSON file:

    {"source": "...", "status": 200, "headers": {...}, and one body:
     "json": {...}            a whole JSON reply
     "text": "..."            a body sent as it is: SSE or NDJSON, sent a frame at a time
     "events": [{"headers": {...}, "payload": {...}}]   AWS event-stream messages
                              ({"base64": "..."}: one message as recorded, byte for byte)
     "cut": true              after the body, the connection is dropped (a stream cut short)}
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..fakes.bedrock_server import frame


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    raw_path: str = ""  # the path as sent, %-escapes kept (what a SigV4 signature covers)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Gate = Callable[[Received], Response | None]


@dataclass
class Replay:
    url: str
    script: list[dict[str, Any]]
    received: list[Received] = field(default_factory=list)  # every call, the gate's included
    answered: int = 0  # calls answered with a fixture
    refused: list[tuple[Received, int, bytes]] = field(default_factory=list)  # what the gate refused
    served: list[Received] = field(default_factory=list)  # the calls a fixture answered

    def bodies(self) -> list[Any]:
        """The JSON bodies of the calls to the vendor's API, answered by a fixture or refused
        by the gate (not the side calls the gate answered: an IAM token exchange is a form)."""
        refused = [r for r, _, _ in self.refused]
        return [r.json() for r in self.received if any(r is x for x in (*self.served, *refused))]


def load(directory: Path, name: str) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((directory / "fixtures" / f"{name}.json").read_text())
    if not fixture.get("source"):
        raise AssertionError(f"fixture {name} names no source")
    return fixture


def _frames(text: str) -> list[bytes]:
    """A recorded text body in the pieces it is sent as: SSE events or NDJSON lines."""
    data = text.encode()
    sse = re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", data)
    pieces = sse if len(sse) > 1 else data.splitlines(keepends=True)
    return [p for p in pieces if p]


def _render(fixture: dict[str, Any]) -> Response:
    status = int(fixture.get("status", 200))
    headers = dict(fixture.get("headers") or {})
    if "json" in fixture:
        return JSONResponse(fixture["json"], status_code=status, headers=headers)
    if "events" in fixture:
        pieces = [
            base64.b64decode(e["base64"])
            if "base64" in e
            else frame(e["headers"], json.dumps(e.get("payload", {})).encode())
            for e in fixture["events"]
        ]
        headers.setdefault("content-type", "application/vnd.amazon.eventstream")
    else:
        pieces = _frames(fixture.get("text", ""))
    media_type = headers.pop("content-type", None)

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)
        if fixture.get("cut"):
            raise ConnectionResetError("the recorded stream ends here: cut short on purpose")

    return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)


def _app(replay: Replay, gate: Gate) -> Any:
    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        received = Received(
            request.method,
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
            scope.get("raw_path", b"").decode(),
        )
        replay.received.append(received)
        response = gate(received)
        if response is not None:
            if response.status_code >= 400:
                replay.refused.append((received, response.status_code, bytes(response.body)))
        else:
            fixture = replay.script[min(replay.answered, len(replay.script) - 1)]
            replay.answered += 1
            replay.served.append(received)
            response = _render(fixture)
        await response(scope, receive, send)

    return asgi


@contextmanager
def replaying(script: list[dict[str, Any]], gate: Gate) -> Iterator[Replay]:
    """The fixtures served on a free loopback port, in a thread, for the block."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    replay = Replay(f"http://127.0.0.1:{sock.getsockname()[1]}", script)
    server = uvicorn.Server(uvicorn.Config(_app(replay, gate), log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield replay
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
