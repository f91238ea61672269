"""Chat-session turns against a scripted LLM (a fake OpenAI server) and real MCP servers:
a stream that fails midway, history trimmed mid tool step, Redis killed during a turn,
and a tool of the reference server-everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from llmservice.app import running_service
from llmservice.providers.openai_family.settings import OpenAISettings
from llmservice.rest.server import running_shim
from llmservice.service.auth import LOCAL
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions import (
    LLMChoice,
    ServerConfig,
    SessionManager,
    ToolInvocation,
    TurnEvent,
    TurnFinal,
    TurnToken,
)
from llmservice.service.sessions.fallback import RETRY_AFTER_S
from llmservice.service.settings import CacheSettings, LLMChatSettings, ServerSettings, Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream
from ..servers import MCP_TOKEN, demo_mcp_server, redis_server

ADD = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])
ANSWER = Reply(text="It is 5.")
EVERYTHING = ["npx", "--no-install", "@modelcontextprotocol/server-everything", "stdio"]


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


def settings(upstream: Upstream, redis_url: str = "", **llmchat: Any) -> Settings:
    return Settings(
        provider="openai",
        server=ServerSettings(grpc_port=0),
        openai=OpenAISettings(
            api_key=SecretStr("k"), base_url=upstream.url + "/v1", model="gpt-test", max_attempts=1
        ),
        cache=CacheSettings(redis_url=redis_url),
        llmchat=LLMChatSettings(
            allowed_hosts=["127.0.0.1"],
            secret_key=SecretStr("s"),
            stdio_servers={"everything": EVERYTHING},
            **llmchat,
        ),
    )


@contextlib.asynccontextmanager
async def manager(config: Settings) -> AsyncIterator[SessionManager]:
    registry = ProviderRegistry.from_settings(config)
    async with registry, SessionManager(LLMCore(registry), config.llmchat, config.cache) as sessions:
        yield sessions


async def turn(sessions: SessionManager, user_id: str, message: str) -> list[TurnEvent]:
    return [e async for e in await sessions.chat(LOCAL, user_id, message)]


def frames(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_a_stream_cut_midway_ends_with_a_retryable_error_event(mcp_url: str) -> None:
    cut = Reply(text="The answer is coming right now", cut_after=3)
    with fake_openai(cut) as upstream:
        config = settings(upstream)
        async with (
            running_service(config, registry=ProviderRegistry.from_settings(config)) as server,
            running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
        ):
            body = {"user_id": "s-cut", "server": {"url": mcp_url, "auth_token": MCP_TOKEN}}
            connected = await http.post("/llmchat/connect", json={**body, "llm": {"provider": "openai"}})
            assert connected.status_code == 200, connected.text
            reply = await http.post(
                "/llmchat/chat", json={"user_id": "s-cut", "message": "hi", "streaming": True}
            )
    events = frames(reply.text)
    kinds = [kind for kind, _ in events]
    assert "token" in kinds  # it had started
    assert kinds[-1] == "error"
    assert "final" not in kinds
    error = events[-1][1]
    assert error["type"] == "error"
    assert error["recoverable"] is True
    assert error["status"] == 503


async def test_a_trimmed_history_goes_to_the_model_from_a_user_turn(mcp_url: str) -> None:
    with redis_server() as store, fake_openai(ADD, ANSWER, ADD, ANSWER, ADD, ANSWER) as upstream:
        config = settings(upstream, store.url, chat_history_max_messages=6)
        async with manager(config) as sessions:
            await sessions.connect(
                LOCAL, "s-trim", ServerConfig(mcp_url, auth_token=MCP_TOKEN), LLMChoice(provider="openai")
            )
            for ask in ("first?", "second?", "third?"):
                assert isinstance((await turn(sessions, "s-trim", ask))[-1], TurnFinal)
        client = aioredis.Redis.from_url(store.url, decode_responses=True)
        lines = [json.loads(line) for line in await client.lrange("llmchat:history:local:s-trim", 0, -1)]
        await client.aclose()
    # Each turn adds four lines (question, tool call, tool result, answer); six are kept,
    # so the stored history starts inside the second turn's tool step...
    assert len(lines) == 6
    assert lines[0]["role"] == "tool"
    # ...and the third turn saw the history from the second's question on, never a torn step.
    third = upstream.requests[4]["messages"]
    assert third[0] == {"role": "user", "content": "second?"}
    assert [m["role"] for m in third] == ["user", "assistant", "tool", "assistant", "user"]


async def test_redis_killed_during_a_turn_loses_nothing(mcp_url: str) -> None:
    slow = Reply(text="one two three four five six", pace_s=0.2)
    with redis_server() as store, fake_openai(slow) as upstream:
        async with manager(settings(upstream, store.url)) as sessions:
            await sessions.connect(
                LOCAL, "s-kill", ServerConfig(mcp_url, auth_token=MCP_TOKEN), LLMChoice(provider="openai")
            )
            events = await sessions.chat(LOCAL, "s-kill", "during?")
            seen: list[TurnEvent] = []
            async for event in events:
                seen.append(event)
                if len(seen) == 1:
                    assert isinstance(event, TurnToken)
                    store.kill()  # the turn is under way: its history will have nowhere to go
            final = seen[-1]
            assert isinstance(final, TurnFinal)
            assert final.response == slow.text  # the turn completes
            store.start()  # back, empty
            await asyncio.sleep(RETRY_AFTER_S + 0.2)
            await turn(sessions, "s-kill", "after?")
        client = aioredis.Redis.from_url(store.url, decode_responses=True)
        lines = [json.loads(line) for line in await client.lrange("llmchat:history:local:s-kill", 0, -1)]
        assert await client.exists("llmchat:session:local:s-kill")
        await client.aclose()
    assert [(m["role"], m["content"]) for m in lines] == [
        ("user", "during?"),
        ("assistant", slow.text),
        ("user", "after?"),
        ("assistant", slow.text),
    ]


async def test_a_server_everything_tool_end_to_end() -> None:
    echo = Reply(text="", tool_calls=[("call_1", "echo", '{"message": "hello from the test"}')])
    with fake_openai(echo, Reply(text="It said hello.")) as upstream:
        async with manager(settings(upstream)) as sessions:
            connected = await sessions.connect(
                LOCAL, "s-every", ServerConfig("everything", "stdio"), LLMChoice(provider="openai")
            )
            assert "echo" in connected.tools
            events = await turn(sessions, "s-every", "Echo something.")
    invocation = next(e for e in events if isinstance(e, ToolInvocation))
    assert invocation.name == "echo"
    assert not invocation.is_error
    assert "hello from the test" in invocation.result
    assert upstream.requests[1]["messages"][-1]["content"] == invocation.result
    final = events[-1]
    assert isinstance(final, TurnFinal)
    assert final.response == "It said hello."


async def test_a_caller_that_leaves_while_the_history_is_read_releases_the_connection(
    mcp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_openai(ANSWER) as upstream:
        async with manager(settings(upstream)) as sessions:
            server = ServerConfig(mcp_url, auth_token=MCP_TOKEN)
            await sessions.connect(LOCAL, "s-leave", server, LLMChoice(provider="openai"))
            reading, never = asyncio.Event(), asyncio.Event()

            async def stuck_read(user_id: str) -> list[Any]:
                reading.set()
                await never.wait()
                return []

            monkeypatch.setattr(sessions.history, "read", stuck_read)
            caller = asyncio.create_task(turn(sessions, "s-leave", "hi"))
            await reading.wait()
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
            # The kept connection is no longer counted as busy, so the janitor can close it.
            assert sessions._live["local:s-leave"].busy == 0
