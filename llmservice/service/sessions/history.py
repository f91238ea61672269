"""Conversation history per session: an interface, a memory store, a Redis store, and the manager.

A session is named by its key (records.session_key: the principal's name, then the user
id), so two callers' sessions of the same user id never share a history.

Each store appends a turn's messages and trims to the newest N in one atomic step, so
two turns racing lose nothing but the oldest lines, and refreshes the TTL. Tool steps
(assistant tool calls and tool results) are kept, so a later turn sees what tools said.
A trimmed history never starts halfway through a tool step: reads begin at a user turn.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from llmservice.kernel.types import Message, ToolCall
from llmservice.service.sessions.fallback import RedisHealth, RedisOrMemory

KEY = "llmchat:history:{}"  # of a session key


class HistoryStore(Protocol):
    async def append(self, session: str, messages: Sequence[Message]) -> None: ...
    async def read(self, session: str) -> list[Message]: ...
    async def clear(self, session: str) -> None: ...
    async def users(self) -> list[str]: ...


def encode(m: Message) -> str:
    body: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        body["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls]
    if m.tool_call_id:
        body["tool_call_id"] = m.tool_call_id
    return json.dumps(body, separators=(",", ":"))


def decode(line: str) -> Message:
    body = json.loads(line)
    calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in body.get("tool_calls", ()))
    return Message(body["role"], body["content"], calls, body.get("tool_call_id", ""))


def from_a_user_turn(messages: list[Message]) -> list[Message]:
    """Drop what a trim left of a step whose start was cut off."""
    for i, m in enumerate(messages):
        if m.role in ("user", "system"):
            return messages[i:]
    return []


class MemoryHistory:
    def __init__(self, max_messages: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max, self._ttl, self._clock = max_messages, ttl_s, clock
        self._lines: dict[str, deque[str]] = {}
        self._expires: dict[str, float] = {}

    async def append(self, session: str, messages: Sequence[Message]) -> None:
        self._expire(session)
        lines = self._lines.setdefault(session, deque(maxlen=self._max))
        lines.extend(encode(m) for m in messages)
        self._expires[session] = self._clock() + self._ttl

    async def read(self, session: str) -> list[Message]:
        self._expire(session)
        return from_a_user_turn([decode(line) for line in self._lines.get(session, ())])

    async def clear(self, session: str) -> None:
        self._lines.pop(session, None)
        self._expires.pop(session, None)

    async def users(self) -> list[str]:
        return list(self._lines)

    async def take_all(self) -> dict[str, list[Message]]:
        """Everything held, removed: for handing back to Redis after an outage."""
        out = {u: [decode(line) for line in lines] for u, lines in self._lines.items()}
        self._lines.clear()
        self._expires.clear()
        return out

    def _expire(self, session: str) -> None:
        if self._expires.get(session, float("inf")) <= self._clock():
            self._lines.pop(session, None)
            self._expires.pop(session, None)


class RedisHistory:
    def __init__(self, client: aioredis.Redis, max_messages: int, ttl_s: int) -> None:
        self._redis, self._max, self._ttl = client, max_messages, ttl_s

    async def append(self, session: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        key = KEY.format(session)
        async with self._redis.pipeline(transaction=True) as tx:  # MULTI ... EXEC: one atomic step
            tx.rpush(key, *(encode(m) for m in messages))
            tx.ltrim(key, -self._max, -1)
            tx.expire(key, self._ttl)
            await tx.execute()

    async def read(self, session: str) -> list[Message]:
        lines = await self._redis.lrange(KEY.format(session), 0, -1)
        return from_a_user_turn([decode(str(line)) for line in lines])

    async def clear(self, session: str) -> None:
        await self._redis.delete(KEY.format(session))

    async def users(self) -> list[str]:
        prefix = KEY.format("")
        return [key[len(prefix) :] async for key in self._redis.scan_iter(match=prefix + "*")]


class ChatHistoryManager:
    """History in Redis when configured, in memory otherwise or while Redis is unreachable."""

    def __init__(
        self,
        redis_client: aioredis.Redis | None,
        max_messages: int,
        ttl_s: int,
        health: RedisHealth | None = None,
    ) -> None:
        self.memory = MemoryHistory(max_messages, ttl_s)
        self.redis = RedisHistory(redis_client, max_messages, ttl_s) if redis_client is not None else None
        self._stores: RedisOrMemory[HistoryStore] = RedisOrMemory(
            self.redis, self.memory, self._hand_back, health
        )

    async def append(self, session: str, messages: Sequence[Message]) -> None:
        await self._stores.run(lambda s: s.append(session, messages))

    async def read(self, session: str) -> list[Message]:
        return await self._stores.run(lambda s: s.read(session))

    async def clear(self, session: str) -> None:
        await self._stores.run(lambda s: s.clear(session))
        await self.memory.clear(session)

    async def _hand_back(self, memory: HistoryStore, redis_store: HistoryStore) -> None:
        """After an outage: what was written in memory joins what Redis holds."""
        assert isinstance(memory, MemoryHistory)
        held = await memory.take_all()
        pending = list(held.items())
        try:
            while pending:
                session, messages = pending[0]
                await redis_store.append(session, messages)
                pending.pop(0)
        finally:
            for session, messages in pending:  # Redis failed again: keep them for next time
                await memory.append(session, messages)
