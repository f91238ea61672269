"""Running the shim with uvicorn inside an asyncio program (the service's, or its own)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import math
import socket
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import uvicorn

from llmservice.kernel.settings import SettingsError
from llmservice.rest.app import Connect, create_app
from llmservice.rest.gate import GatePolicy

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the program that runs us owns SIGTERM and SIGINT and tells us when to stop


@contextlib.asynccontextmanager
async def running_shim(
    target: str,
    host: str,
    port: int,
    tracing: Tracing | None = None,
    connect: Connect | None = None,
    gate: GatePolicy | None = None,
    grace_s: float = 5.0,
    stopping: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> AsyncIterator[int]:
    """Serve the shim for `target` on host:port (0: a free port) for the block; yields the port.
    `connect`: the channel to use instead of one to `target` (see create_app); `gate`: its
    checks (the Host check is on when `host` is loopback). Once `stopping` is set (else once
    the block ends) it stops accepting connections; requests in flight get `grace_s` to end.
    `reuse_port`: share the port with other processes (SO_REUSEPORT: the service's workers)."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a reused connection waits ~40 ms (Nagle and delayed ACKs) per reply.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"the HTTP shim cannot listen on {host}:{port}: {exc.strerror}") from None
    gate = dataclasses.replace(gate or GatePolicy(), check_host=is_loopback(host))
    config = uvicorn.Config(
        create_app(target, tracing, connect, gate),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=math.ceil(grace_s),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    if stopping is not None:
        watch = asyncio.create_task(stopping.wait())
        watch.add_done_callback(lambda _: _stop_accepting(server))
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
        if stopping is not None:
            watch.cancel()


def _stop_accepting(server: _Server) -> None:
    """Close the listener now (uvicorn's own loop would notice should_exit within 0.1 s)."""
    for listener in server.servers:
        listener.close()
    server.should_exit = True


def is_loopback(host: str) -> bool:
    """Whether listening on `host` is listening on loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
