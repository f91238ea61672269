"""What every fake upstream shares: the script of replies, the record of calls, the server.

A test scripts the replies in provider-neutral terms (`Reply`); each fake renders
them in its own provider's wire format. Each call takes the next reply; the last one
repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette


@dataclass
class Reply:
    status: int = 200
    text: str = "Hello there"
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # the error message, in the provider's error body
    cut_after: int | None = None  # stream: drop the connection after this many words
    malformed: bool = False  # stream: one well-framed event that is not JSON; whole reply: the body
    misshapen: bool = False  # the same, but JSON of the wrong shape (an array)
    garbage: bool = False  # stream: bytes that are not the stream's framing at all (Bedrock's)
    error_midway: str = ""  # stream: after the first word, the provider's in-stream error with this message
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments JSON)
    delay_s: float = 0.0  # wait this long before answering
    pace_s: float = 0.0  # stream: wait this long between words
    multiline: bool = False  # stream: each event's JSON split over several `data:` lines
    array_content: bool = False  # content as an array of parts rather than a string
    embedding_dims: int = 8  # embeddings: the model's own vector length
    honour_dimensions: bool = True  # embeddings: shorten vectors to a requested `dimensions`
    cached_tokens: int = 0  # of the 5 prompt tokens, those the provider says its prompt cache served

    @property
    def words(self) -> list[str]:
        """The text in the pieces it streams as: words with their following space."""
        words = [w + " " for w in self.text.split(" ")]
        words[-1] = words[-1].rstrip()
        return words


MALFORMED = b"{not json"
MISSHAPEN = b'["not", "what", "was", "asked"]'


def bad_body(reply: Reply) -> bytes | None:
    """The broken JSON a reply asks for instead of its body or frame, if any."""
    return MALFORMED if reply.malformed else MISSHAPEN if reply.misshapen else None


@dataclass
class Upstream:
    url: str
    script: list[Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    abandoned: int = 0  # streams the client went away from before their end

    def take(self, body: dict[str, Any], headers: dict[str, str], path: str) -> Reply:
        """Record a call and return its scripted reply (after its delay: fakes `await` this)."""
        self.requests.append(body)
        self.headers.append(headers)
        self.paths.append(path)
        return self.script[min(len(self.requests) - 1, len(self.script) - 1)]


@contextmanager
def unanswered_port() -> Iterator[str]:
    """A loopback URL whose listener never accepts and whose queue is full: connecting times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in (*fillers, listener):
            s.close()


@contextmanager
def serving(
    make_app: Callable[[Upstream], Starlette],
    script: tuple[Reply, ...],
    *,
    tls: tuple[str, str] | None = None,
) -> Iterator[Upstream]:
    """The fake on a free loopback port, in a thread, for the block; HTTPS with `tls` (cert, key)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    scheme = "https" if tls else "http"
    upstream = Upstream(f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", list(script) or [Reply()])
    app = make_app(upstream)
    tls_options = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
    server = uvicorn.Server(
        uvicorn.Config(_delayed(app, upstream), log_level="error", lifespan="off", **tls_options)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield upstream
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _delayed(app: Starlette, upstream: Upstream) -> Any:
    """The app, answering each call after the delay of the reply it is about to take."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            delay = upstream.script[min(len(upstream.requests), len(upstream.script) - 1)].delay_s
            if delay:
                await asyncio.sleep(delay)
        await app(scope, receive, send)

    return asgi
