"""Stored responses (the Responses API's `store`) over a real Redis: per principal, with a
TTL, kept in memory while Redis is down and handed back when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from llmservice.kernel.errors import InvalidRequest, NotFound
from llmservice.service.auth import Principal
from llmservice.service.settings import CacheSettings, ResponsesSettings
from llmservice.service.stored_responses import StoredResponses

from ..servers import RedisServer, redis_server

ALICE, BOB = Principal("alice"), Principal("bob")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _store(redis: RedisServer, **settings: object) -> StoredResponses:
    return StoredResponses(ResponsesSettings.model_validate(settings), CacheSettings(redis_url=redis.url))


async def test_each_principal_sees_only_its_own(redis: RedisServer) -> None:
    async with _store(redis) as store:
        await store.put(ALICE, "resp_1", '{"who": "alice"}')
        assert await store.get(ALICE, "resp_1") == '{"who": "alice"}'
        with pytest.raises(NotFound):
            await store.get(BOB, "resp_1")
        with pytest.raises(NotFound):
            await store.delete(BOB, "resp_1")
        await store.delete(ALICE, "resp_1")
        with pytest.raises(NotFound):
            await store.get(ALICE, "resp_1")
    # In Redis, under a key that names neither the principal nor anything but the id.
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    async with _store(redis) as store:
        await store.put(ALICE, "resp_2", "{}")
    keys = await client.keys("*")
    assert len(keys) == 1
    assert keys[0].endswith(":resp_2")
    assert "alice" not in keys[0]
    assert 0 < await client.ttl(keys[0]) <= 30 * 24 * 3600
    await client.aclose()


async def test_a_document_expires_after_its_ttl(redis: RedisServer) -> None:
    async with _store(redis, ttl_s=1) as store:
        assert await store.put(ALICE, "resp_1", "{}") == 1
        await asyncio.sleep(1.5)
        with pytest.raises(NotFound):
            await store.get(ALICE, "resp_1")


async def test_bad_ids_and_oversized_documents_are_refused(redis: RedisServer) -> None:
    async with _store(redis, max_bytes=1024) as store:
        with pytest.raises(InvalidRequest) as bad_id:
            await store.put(ALICE, "resp/../x", "{}")
        assert bad_id.value.field == "id"
        with pytest.raises(InvalidRequest) as too_big:
            await store.put(ALICE, "resp_1", "x" * 2000)
        assert too_big.value.field == "body_json"


async def test_while_redis_is_down_documents_wait_in_memory_and_are_handed_back(redis: RedisServer) -> None:
    async with _store(redis) as store:
        redis.kill()
        await store.put(ALICE, "resp_down", '{"kept": true}')  # accepted, in memory
        assert await store.get(ALICE, "resp_down") == '{"kept": true}'
        redis.start()
        await asyncio.sleep(2.1)  # past the fallback's pause before Redis is tried again
        assert await store.get(ALICE, "resp_down") == '{"kept": true}'  # from Redis now
    async with _store(redis) as fresh:  # another worker, reading Redis only
        assert await fresh.get(ALICE, "resp_down") == '{"kept": true}'


async def test_without_redis_the_memory_store_keeps_the_newest() -> None:
    settings = ResponsesSettings(max_memory_documents=2)
    async with StoredResponses(settings, CacheSettings()) as store:
        for i in range(3):
            await store.put(ALICE, f"resp_{i}", str(i))
        with pytest.raises(NotFound):
            await store.get(ALICE, "resp_0")
        assert [await store.get(ALICE, f"resp_{i}") for i in (1, 2)] == ["1", "2"]
