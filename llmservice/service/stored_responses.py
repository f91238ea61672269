"""Stored responses (the Responses API's `store`): opaque JSON documents by id, per principal.

Each principal has a namespace of its own: an id another principal stored reads as not
found. Documents live in Redis when the cache is configured for it (the same Redis and
memory fallback chat sessions use: while Redis is down, writes go to memory and are
handed back when it returns), in memory otherwise, and expire `ttl_s` after they were
written. The memory store keeps at most `max_memory_documents`, dropping the oldest.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis

from llmservice.kernel.errors import InvalidRequest, NotFound
from llmservice.service.auth import Principal
from llmservice.service.sessions import fallback
from llmservice.service.settings import CacheSettings, ResponsesSettings

KEY = "llmservice:response:{}:{}"  # principal (hashed), id
ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class DocumentStore(Protocol):
    async def put(self, key: str, body: str) -> None: ...
    async def get(self, key: str) -> str | None: ...
    async def delete(self, key: str) -> bool: ...


class MemoryDocuments:
    def __init__(self, ttl_s: int, max_documents: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s, self._max, self._clock = ttl_s, max_documents, clock
        self._docs: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expiry, body)

    async def put(self, key: str, body: str) -> None:
        self._docs.pop(key, None)
        self._docs[key] = (self._clock() + self._ttl_s, body)
        while len(self._docs) > self._max:
            self._docs.popitem(last=False)

    async def get(self, key: str) -> str | None:
        found = self._docs.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._docs[key]
            return None
        return found[1]

    async def delete(self, key: str) -> bool:
        return await self.get(key) is not None and self._docs.pop(key, None) is not None

    def take_all(self) -> dict[str, str]:
        """What is still live, emptied out (handed back to Redis when it returns)."""
        now = self._clock()
        live = {k: body for k, (expiry, body) in self._docs.items() if expiry > now}
        self._docs.clear()
        return live


class RedisDocuments:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis, self._ttl_s = client, ttl_s

    async def put(self, key: str, body: str) -> None:
        await self._redis.set(key, body, ex=self._ttl_s)

    async def get(self, key: str) -> str | None:
        body = await self._redis.get(key)  # decode_responses: text
        return None if body is None else str(body)

    async def delete(self, key: str) -> bool:
        return bool(await self._redis.delete(key))


class StoredResponses:
    """The store behind ResponseStoreService; an async context manager (it owns its Redis client)."""

    def __init__(self, settings: ResponsesSettings, cache: CacheSettings) -> None:
        self.ttl_s, self.max_bytes = settings.ttl_s, settings.max_bytes
        url = cache.redis_url or "redis://127.0.0.1:6379/0"
        self._redis = fallback.connect(url) if cache.uses_redis else None
        self.memory = MemoryDocuments(settings.ttl_s, settings.max_memory_documents)
        redis_store = RedisDocuments(self._redis, settings.ttl_s) if self._redis is not None else None
        health = fallback.RedisHealth(what="stored responses")
        self._stores: fallback.RedisOrMemory[DocumentStore] = fallback.RedisOrMemory(
            redis_store, self.memory, self._hand_back, health
        )

    async def __aenter__(self) -> StoredResponses:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def put(self, principal: Principal, doc_id: str, body: str) -> int:
        """Store `body` under `doc_id`; the seconds until it expires."""
        key = _key(principal, doc_id)
        if len(body.encode()) > self.max_bytes:
            raise InvalidRequest("body_json", f"is over {self.max_bytes} bytes")
        await self._stores.run(lambda s: s.put(key, body))
        return self.ttl_s

    async def get(self, principal: Principal, doc_id: str) -> str:
        key = _key(principal, doc_id)
        body = await self._stores.run(lambda s: s.get(key))
        if body is None:
            raise NotFound(f"response {doc_id!r} not found")
        return body

    async def delete(self, principal: Principal, doc_id: str) -> None:
        key = _key(principal, doc_id)
        if not await self._stores.run(lambda s: s.delete(key)):
            raise NotFound(f"response {doc_id!r} not found")

    async def _hand_back(self, memory: DocumentStore, redis_store: DocumentStore) -> None:
        for key, body in self.memory.take_all().items():
            await redis_store.put(key, body)


def _key(principal: Principal, doc_id: str) -> str:
    if not ID.fullmatch(doc_id):
        raise InvalidRequest("id", f"{doc_id[:40]!r} is not 1-128 letters, digits, '_' or '-'")
    # Hashed: a principal's name may hold anything, and the key shows nothing of it.
    return KEY.format(hashlib.sha256(principal.name.encode()).hexdigest()[:32], doc_id)
