"""Redis with a memory fallback: use Redis while it answers, memory while it does not.

When Redis stops answering, work goes on in memory; Redis is tried again after a pause,
and when it answers, whatever each store kept in memory meanwhile is handed back to Redis
(its `recover` hook), so nothing accepted during the outage is lost. The stores of one
worker share one `RedisHealth`, so an outage is logged once, and its end once.
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
# Delete KEYS[1] only if it still holds ARGV[1]: a worker never frees what it no longer holds.
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast when Redis is down, so the fallback takes over quickly."""
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0, retry_on_timeout=False
    )


class RedisHealth:
    """Whether Redis is considered down, shared by a worker's stores; logs each change once."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, what: str = "chat sessions and history"
    ) -> None:
        self._clock = clock
        self._what = what  # what is kept in memory meanwhile, for the log
        self._down_until: float | None = None  # while set, Redis is considered down until then

    @property
    def up(self) -> bool:
        return self._down_until is None

    def worth_trying(self) -> bool:
        return self._down_until is None or self._clock() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            log.warning("Redis unreachable (%s): %s kept in memory until it returns", exc, self._what)
        self._down_until = self._clock() + RETRY_AFTER_S

    def answered(self) -> None:
        if self._down_until is not None:
            log.warning("Redis reachable again: %s back in Redis", self._what)
            self._down_until = None


class RedisOrMemory(Generic[S]):
    """Runs each operation on the Redis-backed store, or on the memory one while Redis is down."""

    def __init__(
        self,
        redis_store: S | None,
        memory_store: S,
        recover: Callable[[S, S], Awaitable[None]] | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        self._redis, self._memory, self._recover = redis_store, memory_store, recover
        self.health = health or RedisHealth()
        self._held = False  # the memory store took writes that Redis has not seen yet

    @property
    def redis_up(self) -> bool:
        return self._redis is not None and self.health.up

    async def run(self, op: Callable[[S], Awaitable[T]]) -> T:
        if self._redis is None:
            return await op(self._memory)
        if not self.health.worth_trying():
            self._held = True
            return await op(self._memory)
        try:
            if self._held and self._recover is not None:
                await self._recover(self._memory, self._redis)
            self._held = False
            result = await op(self._redis)
        except UNREACHABLE as exc:
            self.health.failed(exc)
            self._held = True
            return await op(self._memory)
        self.health.answered()
        return result
