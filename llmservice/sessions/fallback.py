"""Redis with a memory fallback: use Redis while it answers, memory while it does not.

When Redis stops answering, the failure is logged once and work goes on in memory; Redis
is tried again after a pause, and when it answers, that is logged and whatever was kept
in memory meanwhile is handed back to Redis (the `recover` hook), so nothing accepted
during the outage is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
RETRY_AFTER_S = 2.0
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast when Redis is down, so the fallback takes over quickly."""
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0, retry_on_timeout=False
    )


class RedisOrMemory(Generic[S]):
    """Runs each operation on the Redis-backed store, or on the memory one while Redis is down."""

    def __init__(
        self,
        what: str,
        redis_store: S | None,
        memory_store: S,
        recover: Callable[[S, S], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what, self._redis, self._memory = what, redis_store, memory_store
        self._recover, self._clock = recover, clock
        self._down_until: float | None = None  # while set, Redis is considered down until then

    @property
    def redis_up(self) -> bool:
        return self._redis is not None and self._down_until is None

    async def run(self, op: Callable[[S], Awaitable[T]]) -> T:
        if self._redis is None:
            return await op(self._memory)
        if self._down_until is not None and self._clock() < self._down_until:
            return await op(self._memory)
        try:
            if self._down_until is not None and self._recover is not None:
                await self._recover(self._memory, self._redis)
            result = await op(self._redis)
        except UNREACHABLE as exc:
            if self._down_until is None:
                log.warning("Redis unreachable (%s): %s kept in memory until it returns", exc, self._what)
            self._down_until = self._clock() + RETRY_AFTER_S
            return await op(self._memory)
        if self._down_until is not None:
            log.warning("Redis reachable again: %s back in Redis", self._what)
            self._down_until = None
        return result
