"""Which worker holds a session's live MCP connection, and the lock around building one.

With Redis: `llmchat:owner:{user}` names the owning worker for `session_ttl` seconds,
renewed by every turn it serves; `llmchat:lock:{user}` (SET NX with `session_lock_ttl`)
guards building a connection, taken in `session_lock_retries` tries `session_lock_wait`
apart, and released by compare-and-delete so a worker never frees a lock it lost. The
worker that serves a turn takes ownership; when the owner is gone its key simply
expires and the next worker takes over. Without Redis, one process: a local lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from llmservice.errors import Unavailable
from llmservice.settings import LLMChatSettings

from .fallback import UNREACHABLE

OWNER = "llmchat:owner:{}"
LOCK = "llmchat:lock:{}"
# Delete the key only if it still holds our token.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Ownership:
    def __init__(self, client: aioredis.Redis | None, settings: LLMChatSettings, worker_id: str) -> None:
        self._redis, self._settings, self.worker_id = client, settings, worker_id
        self._local: dict[str, asyncio.Lock] = {}

    async def owner(self, user_id: str) -> str | None:
        if self._redis is None:
            return self.worker_id
        try:
            value = await self._redis.get(OWNER.format(user_id))
        except UNREACHABLE:
            return self.worker_id
        return None if value is None else str(value)

    async def claim(self, user_id: str) -> None:
        """This worker owns the session for the next session_ttl seconds."""
        if self._redis is None:
            return
        with contextlib.suppress(*UNREACHABLE):  # without Redis, every worker is on its own
            await self._redis.set(OWNER.format(user_id), self.worker_id, ex=self._settings.session_ttl)

    async def release(self, user_id: str) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(*UNREACHABLE):
            await self._redis.eval(_RELEASE, 1, OWNER.format(user_id), self.worker_id)

    @contextlib.asynccontextmanager
    async def building(self, user_id: str) -> AsyncIterator[None]:
        """Hold the lock around building the session's connection."""
        local = self._local.setdefault(user_id, asyncio.Lock())
        async with local:
            if self._redis is None:
                yield
                return
            token = uuid.uuid4().hex
            key = LOCK.format(user_id)
            s = self._settings
            try:
                for attempt in range(s.session_lock_retries + 1):
                    if await self._redis.set(key, token, nx=True, ex=s.session_lock_ttl):
                        break
                    if attempt < s.session_lock_retries:
                        await asyncio.sleep(s.session_lock_wait)
                else:
                    raise Unavailable(
                        f"session {user_id!r} is being set up by another worker; retry in a moment",
                        retry_after_s=s.session_lock_wait * (s.session_lock_retries + 1),
                    )
            except UNREACHABLE:
                yield  # Redis is down: this worker goes on alone
                return
            try:
                yield
            finally:
                with contextlib.suppress(*UNREACHABLE):
                    await self._redis.eval(_RELEASE, 1, key, token)
