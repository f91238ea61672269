"""Several workers on one Redis, in one process: what a rebuild trusts, who owns a session,
the lock around building one, sessions per principal and their cap, memory mode's
janitor, Redis outages.

Each worker is a SessionManager of its own (what one `llmservice serve` holds); the LLM is
a fake OpenAI server answering at once, the MCP servers are real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from llmservice.kernel.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from llmservice.providers.openai_family.settings import OpenAISettings
from llmservice.service.auth import Principal
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions import LLMChoice, ServerConfig, SessionManager, TurnFinal
from llmservice.service.sessions.ownership import LOCK, OWNER, Ownership
from llmservice.service.settings import CacheSettings, LLMChatSettings, Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply
from ..servers import MCP_TOKEN, RedisServer, demo_mcp_server, redis_server

ALICE, BOB = Principal("alice"), Principal("bob")
TIME = ServerConfig("time", "stdio")
LLM = LLMChoice(provider="openai")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    with fake_openai(Reply(text="Done.")) as upstream:
        yield upstream.url


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    yield client
    await client.aclose()


def settings(llm_url: str, redis_url: str = "", **llmchat: Any) -> Settings:
    return Settings(
        provider="openai",
        openai=OpenAISettings(api_key=SecretStr("k"), base_url=llm_url + "/v1", model="gpt-test"),
        cache=CacheSettings(redis_url=redis_url),
        llmchat=LLMChatSettings(
            allowed_hosts=["127.0.0.1"],
            secret_key=SecretStr("shared-by-every-worker"),
            stdio_servers={"time": [sys.executable, "-m", "mcp_server_time"]},
            **llmchat,
        ),
    )


@contextlib.asynccontextmanager
async def worker(config: Settings, name: str) -> AsyncIterator[SessionManager]:
    registry = ProviderRegistry.from_settings(config)
    async with (
        registry,
        SessionManager(LLMCore(registry), config.llmchat, config.cache, worker_id=name) as sessions,
    ):
        yield sessions


async def turn(sessions: SessionManager, user_id: str, principal: Principal = ALICE) -> TurnFinal:
    events = [e async for e in await sessions.chat(principal, user_id, "What time is it?")]
    final = events[-1]
    assert isinstance(final, TurnFinal)
    return final


def children(needle: str) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", needle], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


async def tamper(store: aioredis.Redis, user_id: str, **server: Any) -> None:
    key = f"llmchat:session:alice:{user_id}"
    record = json.loads(await store.get(key))
    record["server"].update(server)
    await store.set(key, json.dumps(record), keepttl=True)


async def test_a_rebuild_runs_the_configured_command_never_one_from_redis(
    redis: RedisServer, llm_url: str, store: aioredis.Redis, tmp_path: Path
) -> None:
    config = settings(llm_url, redis.url)
    marker = tmp_path / "ran"
    async with worker(config, "a") as a, worker(config, "b") as b:
        await a.connect(ALICE, "t-argv", TIME, LLM)
        assert "argv" not in json.loads(await store.get("llmchat:session:alice:t-argv"))["server"]
        evil = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
        await tamper(store, "t-argv", argv=evil)
        await turn(b, "t-argv")  # b rebuilds from Redis, with its own configuration's command
        assert not marker.exists()
        await tamper(store, "t-argv", url="not-configured")
        with pytest.raises(InvalidRequest, match=r"llmchat\.stdio_servers"):
            await b.chat(ALICE, "t-argv", "hi")


async def test_a_rebuild_checks_the_url_policy_again(
    redis: RedisServer, llm_url: str, mcp_url: str, store: aioredis.Redis
) -> None:
    config = settings(llm_url, redis.url)
    async with worker(config, "a") as a, worker(config, "b") as b:
        await a.connect(ALICE, "t-url", ServerConfig(mcp_url, auth_token=MCP_TOKEN), LLM)
        await tamper(store, "t-url", url="http://169.254.169.254/latest/mcp")
        with pytest.raises(PermissionDenied, match="metadata"):
            await b.chat(ALICE, "t-url", "hi")


async def test_a_live_owner_keeps_the_session_and_a_dead_ones_is_taken_over(
    redis: RedisServer, llm_url: str, mcp_url: str, store: aioredis.Redis
) -> None:
    config = settings(llm_url, redis.url, session_ttl=2)
    server = ServerConfig(mcp_url, auth_token=MCP_TOKEN)
    async with worker(config, "b") as b:
        async with worker(config, "a") as a:
            await a.connect(ALICE, "t-own", server, LLM)
            assert await store.get(OWNER.format("alice:t-own")) == "a"
            await turn(b, "t-own")  # served on b, with a connection for that turn only
            assert await store.get(OWNER.format("alice:t-own")) == "a"
            assert "alice:t-own" not in b._live
        # a is gone (its connections closed, its ownership left to expire, as when killed).
        async with asyncio.timeout(10):
            while await store.exists(OWNER.format("alice:t-own")):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await turn(b, "t-own")
        assert await store.get(OWNER.format("alice:t-own")) == "b"
        assert b._live["alice:t-own"].connection.alive  # b keeps it now


async def test_the_build_lock_waits_retries_and_never_frees_anothers(redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    chat = LLMChatSettings(session_lock_retries=3, session_lock_wait=0.05, session_lock_ttl=5)
    ownership = Ownership(client, chat, "me")
    key = LOCK.format("t-lock")
    try:
        await client.set(key, "theirs")
        with pytest.raises(Unavailable, match="being set up by another worker"):
            async with ownership.building("t-lock"):
                pass
        assert await client.get(key) == "theirs"  # not deleted: it is not ours

        async def let_go() -> None:
            await asyncio.sleep(0.08)  # after the first try, before the last
            await client.delete(key)

        freed = asyncio.create_task(let_go())
        async with ownership.building("t-lock"):
            assert await client.get(key) not in (None, "theirs")  # a later try got it
            await client.set(key, "theirs-now")  # ours expired, another worker took it
        await freed
        assert await client.get(key) == "theirs-now"  # compare-and-delete left theirs alone
        assert not ownership._local  # the local lock went with its last user
    finally:
        await client.delete(key)
        await client.aclose()


async def test_two_callers_user_ids_are_two_sessions_on_every_worker(
    redis: RedisServer, llm_url: str, mcp_url: str, store: aioredis.Redis
) -> None:
    """Regression: user ids were global, so bob was told alice's `t-two` "belongs to another
    caller" (it exists), and whoever connected a name first took it."""
    config = settings(llm_url, redis.url)
    server = ServerConfig(mcp_url, auth_token=MCP_TOKEN)
    async with worker(config, "a") as a, worker(config, "b") as b:
        await asyncio.gather(a.connect(ALICE, "t-two", server, LLM), b.connect(BOB, "t-two", TIME, LLM))
        for key, principal in (("alice:t-two", "alice"), ("bob:t-two", "bob")):
            assert json.loads(str(await store.get(f"llmchat:session:{key}")))["principal"] == principal
        assert (await store.get(OWNER.format("alice:t-two")), await store.get(OWNER.format("bob:t-two"))) == (
            "a",
            "b",
        )
        await turn(b, "t-two", ALICE)  # alice's on b: her MCP server's tools, not bob's
        await turn(a, "t-two", BOB)
        assert (await a.config(ALICE, "t-two")).server.url == mcp_url
        assert (await a.config(BOB, "t-two")).server.url == "time"
        assert await a.disconnect(BOB, "t-two")
        assert await b.status(ALICE, "t-two")  # bob's disconnect left alice's alone
        assert not await b.status(BOB, "t-two")
        with pytest.raises(NotFound):  # as for a user id nobody has: nothing says alice has one
            await b.chat(BOB, "t-two", "hi")
        await a.disconnect(ALICE, "t-two")


async def test_the_cap_on_a_principals_sessions(
    redis: RedisServer, llm_url: str, store: aioredis.Redis
) -> None:
    carol, dave = Principal("carol"), Principal("dave")  # of their own: the other tests' sessions stay
    config = settings(llm_url, redis.url, max_sessions_per_principal=2)
    async with worker(config, "a") as a, worker(config, "b") as b:
        await a.connect(carol, "t-cap-1", TIME, LLM)
        await b.connect(carol, "t-cap-2", TIME, LLM)  # the cap counts across workers
        with pytest.raises(ResourceExhausted) as refused:
            await a.connect(carol, "t-cap-3", TIME, LLM)
        assert refused.value.message == (
            "this caller has reached the cap of 2 open chat sessions "
            "(llmchat.max_sessions_per_principal); disconnect one first"
        )
        await a.connect(carol, "t-cap-1", TIME, LLM)  # connecting one again is no new session
        await b.connect(dave, "t-cap-1", TIME, LLM)  # dave's are his own
        await b.disconnect(carol, "t-cap-2")
        await b.connect(carol, "t-cap-3", TIME, LLM)  # a place is free again
        assert await store.zcard("llmchat:sessions:carol") == 2
        for user_id in ("t-cap-1", "t-cap-3"):
            await a.disconnect(carol, user_id)
        await a.disconnect(dave, "t-cap-1")
        assert not await store.exists("llmchat:sessions:carol")


async def test_a_failed_connect_gives_its_place_back(redis: RedisServer, llm_url: str) -> None:
    erin = Principal("erin")
    config = settings(llm_url, redis.url, max_sessions_per_principal=1)
    async with worker(config, "a") as a:
        with pytest.raises(Unavailable):
            await a.connect(erin, "t-free", ServerConfig("http://127.0.0.1:9/mcp"), LLM)
        await a.connect(erin, "t-free-2", TIME, LLM)
        await a.disconnect(erin, "t-free-2")


async def test_memory_mode_closes_an_idle_sessions_stdio_server(llm_url: str) -> None:
    async with worker(settings(llm_url, session_ttl=1), "m") as sessions:
        before = set(children("mcp_server_time"))
        await sessions.connect(ALICE, "t-idle", TIME, LLM)
        assert set(children("mcp_server_time")) - before
        async with asyncio.timeout(15):
            while set(children("mcp_server_time")) - before:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        await turn(sessions, "t-idle")  # the session itself goes on: rebuilt from its record


async def test_while_redis_is_down_an_unknown_session_is_unavailable_not_missing(
    llm_url: str, mcp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server() as own:
        config = settings(llm_url, own.url)
        server = ServerConfig(mcp_url, auth_token=MCP_TOKEN)
        async with worker(config, "a") as a, worker(config, "b") as b:
            await a.connect(ALICE, "t-down", server, LLM)
            caplog.set_level(logging.WARNING, logger="llmservice.service.sessions.fallback")
            own.kill()
            with pytest.raises(Unavailable, match="unreachable"):
                await b.chat(ALICE, "t-down", "hi")  # b never saw it: it cannot say it is gone
            await turn(a, "t-down")  # a knows the session and goes on
            await turn(a, "t-down")
            down = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
            assert len(down) == 2  # once per worker, not once per store or per call
