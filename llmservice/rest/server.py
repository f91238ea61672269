"""Running the shim with uvicorn inside an asyncio program (the service's, or its own)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import uvicorn

from llmservice.rest.app import Connect, create_app

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the program that runs us owns SIGTERM and SIGINT and tells us when to stop


@contextlib.asynccontextmanager
async def running_shim(
    target: str, host: str, port: int, tracing: Tracing | None = None, connect: Connect | None = None
) -> AsyncIterator[int]:
    """Serve the shim for `target` on host:port (0: a free port) for the block; yields the port.
    `connect`: the channel to use instead of one to `target` (see create_app)."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a reused connection waits ~40 ms (Nagle and delayed ACKs) per reply.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        create_app(target, tracing, connect),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
                raise RuntimeError("the HTTP shim stopped before it started")
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()
