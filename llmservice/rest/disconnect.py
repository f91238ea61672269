"""An HTTP client that goes away cancels its gRPC call, whatever the handler is waiting on.

Starlette notices a disconnect only while a StreamingResponse is sending. Before that (a
whole reply, a reply collected from a stream, or a stream's first chunk, which may wait
in the service's queue) nothing reads the connection, so this watches it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

from llmservice.rest.errors import APIError


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone; the request body has already been read."""
    while (await receive())["type"] != "http.disconnect":
        pass


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(request: Request, *calls: Any) -> AsyncIterator[None]:
    """For the block, a client that leaves cancels `calls` (grpc.aio calls); the block then ends
    with a 499 rather than the CancelledError a cancelled call raises."""
    watcher = asyncio.create_task(_disconnected(request.receive))

    def cancel_call(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            for call in calls:
                call.cancel()

    watcher.add_done_callback(cancel_call)
    try:
        yield
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
            raise APIError(499, "the client closed the request", "cancelled") from None
        raise
    finally:
        watcher.cancel()


async def all_of(calls: Sequence[Any], waits: Sequence[Awaitable[Any]]) -> list[Any]:
    """Each of `waits` (on `calls`, grpc.aio calls), in order; the first failure cancels the rest."""
    if len(waits) == 1:
        return [await waits[0]]
    try:
        return list(await asyncio.gather(*waits))
    except BaseException:
        for call in calls:
            call.cancel()
        raise
