"""Which worker holds a session's live MCP connection, and the lock around building one.

A session is named by its key (records.session_key: the principal's name, then the user
id), so two callers' sessions of one user id are owned and locked apart.

With Redis, `llmchat:owner:{session}` names the one worker that keeps a live connection for
the session. `claim` is atomic (a Lua compare): it takes the key only if it is free or
already ours, and then renews it for `session_ttl` seconds; every turn the owner serves
renews it. A worker serving a turn for a session another live worker owns keeps no
connection of its own: it opens one for that turn only and closes it after, so at most
one worker holds a session open, and a turn never waits for a worker it cannot reach.
When the owner is gone (killed, or idle for session_ttl), its key expires, and the next
worker to serve a turn claims the session and keeps its connection: that is takeover.
`connect` starts a new session, so it `take`s the key whoever held it.

`llmchat:lock:{session}` (SET NX with `session_lock_ttl`) guards building a connection,
taken in `session_lock_retries` more tries `session_lock_wait` apart, and released by
compare-and-delete so a worker never frees a lock it lost. Without Redis, or while it is
down, every worker is on its own: a local lock, and claims always succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from llmservice.kernel.errors import Unavailable
from llmservice.service.sessions.fallback import RELEASE, UNREACHABLE
from llmservice.service.settings import LLMChatSettings

OWNER = "llmchat:owner:{}"
LOCK = "llmchat:lock:{}"
# Take the key if free, renew it if ours; 1 if it is ours now, 0 if another holds it.
_CLAIM = """
local owner = redis.call('get', KEYS[1])
if not owner or owner == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


@dataclass
class _LocalLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # tasks holding or waiting for it: the entry goes when none are left


class Ownership:
    def __init__(self, client: aioredis.Redis | None, settings: LLMChatSettings, worker_id: str) -> None:
        self._redis, self._settings, self.worker_id = client, settings, worker_id
        self._local: dict[str, _LocalLock] = {}

    async def owner(self, session: str) -> str | None:
        if self._redis is None:
            return self.worker_id
        try:
            value = await self._redis.get(OWNER.format(session))
        except UNREACHABLE:
            return self.worker_id
        return None if value is None else str(value)

    async def claim(self, session: str) -> bool:
        """Own the session for the next session_ttl seconds, unless another worker does."""
        if self._redis is None:
            return True
        try:
            taken = await self._redis.eval(
                _CLAIM, 1, OWNER.format(session), self.worker_id, str(self._settings.session_ttl)
            )
        except UNREACHABLE:
            return True  # without Redis, every worker is on its own
        return bool(taken)

    async def take(self, session: str) -> None:
        """Own a session just connected here, whoever owned the one it replaces."""
        if self._redis is None:
            return
        with contextlib.suppress(*UNREACHABLE):
            await self._redis.set(OWNER.format(session), self.worker_id, ex=self._settings.session_ttl)

    async def release(self, session: str) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(*UNREACHABLE):
            await self._redis.eval(RELEASE, 1, OWNER.format(session), self.worker_id)

    @contextlib.asynccontextmanager
    async def building(self, session: str) -> AsyncIterator[None]:
        """Hold the lock around building the session's connection."""
        local = self._local.setdefault(session, _LocalLock())
        local.users += 1
        try:
            async with local.lock, self._redis_lock(session):
                yield
        finally:
            local.users -= 1
            if not local.users:
                del self._local[session]

    @contextlib.asynccontextmanager
    async def _redis_lock(self, session: str) -> AsyncIterator[None]:
        if self._redis is None:
            yield
            return
        token = uuid.uuid4().hex
        key = LOCK.format(session)
        try:
            await self._acquire(session, key, token)
        except UNREACHABLE:
            yield  # Redis is down: this worker goes on alone
            return
        try:
            yield
        finally:
            with contextlib.suppress(*UNREACHABLE):
                await self._redis.eval(RELEASE, 1, key, token)

    async def _acquire(self, session: str, key: str, token: str) -> None:
        assert self._redis is not None
        s = self._settings
        for attempt in range(s.session_lock_retries + 1):
            if await self._redis.set(key, token, nx=True, ex=s.session_lock_ttl):
                return
            if attempt < s.session_lock_retries:
                await asyncio.sleep(s.session_lock_wait)
        raise Unavailable(
            f"session {session!r} is being set up by another worker; retry in a moment",
            retry_after_s=s.session_lock_wait * (s.session_lock_retries + 1),
        )
