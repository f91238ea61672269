"""What a session turn leaves in the history when it does not answer (refused, failed, its
caller gone, cut by a drain), and draining: a drain waits for the turns in flight, refuses
new ones, and cuts what is left at the end of its grace. A scripted LLM (a fake OpenAI
server), the demo MCP server (its `slow` tool), real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.grpc_api import GrpcServer
from llmservice.kernel.errors import InvalidRequest, Unavailable
from llmservice.kernel.types import Message
from llmservice.service.auth import LOCAL
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions import (
    LLMChoice,
    ServerConfig,
    SessionManager,
    ToolStarted,
    TurnEvent,
    TurnFinal,
)
from llmservice.service.sessions.agent import CUT_SHORT
from llmservice.service.settings import Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream
from ..servers import MCP_TOKEN, demo_mcp_server, redis_server

ADD = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])
ANSWER = Reply(text="It is 5.")
REFUSED = Reply(status=400, error="This model's maximum context length is 128000 tokens")
DOWN = Reply(status=503, error="overloaded")


def slow(seconds: float) -> Reply:
    return Reply(text="", tool_calls=[("call_1", "slow", json.dumps({"seconds": seconds}))])


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


def settings(upstream: Upstream, redis_url: str = "") -> Settings:
    return Settings.model_validate(
        {
            "provider": "openai",
            "server": {"grpc_port": 0},
            "openai": {
                "api_key": "k",
                "base_url": upstream.url + "/v1",
                "model": "gpt-test",
                "max_attempts": 1,
            },
            "cache": {"redis_url": redis_url},
            "llmchat": {"allowed_hosts": ["127.0.0.1"], "secret_key": "s", "tool_timeout_s": 120},
        }
    )


@contextlib.asynccontextmanager
async def manager(config: Settings) -> AsyncIterator[SessionManager]:
    registry = ProviderRegistry.from_settings(config)
    async with registry, SessionManager(LLMCore(registry), config.llmchat, config.cache) as sessions:
        yield sessions


async def connected(sessions: SessionManager, user_id: str, mcp_url: str) -> None:
    await sessions.connect(
        LOCAL, user_id, ServerConfig(mcp_url, auth_token=MCP_TOKEN), LLMChoice(provider="openai")
    )


async def turn(sessions: SessionManager, user_id: str, message: str) -> list[TurnEvent]:
    return [e async for e in await sessions.chat(LOCAL, user_id, message)]


def roles(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def answered(messages: list[dict[str, Any]]) -> bool:
    """Whether every assistant tool call of a conversation (OpenAI's wire form) has its result."""
    calls = {c["id"] for m in messages for c in m.get("tool_calls") or ()}
    return calls <= {m.get("tool_call_id") for m in messages if m["role"] == "tool"}


async def test_a_refused_turn_leaves_nothing_and_the_next_one_answers(mcp_url: str) -> None:
    """Regression: the refused message stayed in the history, so every later turn was refused too."""
    with fake_openai(REFUSED, ANSWER) as upstream:
        async with manager(settings(upstream)) as sessions:
            await connected(sessions, "c-refused", mcp_url)
            with pytest.raises(InvalidRequest, match="HTTP 400"):
                await turn(sessions, "c-refused", "far too long")
            assert await sessions.history.read("local:c-refused") == []
            final = (await turn(sessions, "c-refused", "What is 2 plus 3?"))[-1]
            assert isinstance(final, TurnFinal)
            assert final.response == "It is 5."
    assert [m["content"] for m in upstream.requests[1]["messages"]] == ["What is 2 plus 3?"]


async def test_a_turn_refused_after_its_tools_ran_leaves_nothing_either(mcp_url: str) -> None:
    """What was refused is the conversation with the tool steps in it: kept, they would be
    sent, and refused, again."""
    with fake_openai(ADD, REFUSED, ANSWER) as upstream:
        async with manager(settings(upstream)) as sessions:
            await connected(sessions, "c-refused-late", mcp_url)
            with pytest.raises(InvalidRequest):
                await turn(sessions, "c-refused-late", "What is 2 plus 3?")
            assert await sessions.history.read("local:c-refused-late") == []
            assert isinstance((await turn(sessions, "c-refused-late", "Again?"))[-1], TurnFinal)


async def test_a_turn_that_fails_after_its_tools_ran_keeps_its_tool_steps(mcp_url: str) -> None:
    """A tool's work may have taken effect: its call and result stay, but no answer is made up;
    one that fails before any tool ran leaves nothing."""
    with fake_openai(DOWN, ADD, DOWN, ANSWER) as upstream:
        async with manager(settings(upstream)) as sessions:
            await connected(sessions, "c-down", mcp_url)
            with pytest.raises(Unavailable):
                await turn(sessions, "c-down", "first?")
            assert await sessions.history.read("local:c-down") == []
            with pytest.raises(Unavailable):
                await turn(sessions, "c-down", "What is 2 plus 3?")
            history = await sessions.history.read("local:c-down")
            assert roles(history) == [("user", "What is 2 plus 3?"), ("assistant", ""), ("tool", "5")]
            assert history[1].tool_calls[0].id == history[2].tool_call_id == "call_1"
            assert isinstance((await turn(sessions, "c-down", "And?"))[-1], TurnFinal)
    last = upstream.requests[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "user"]


async def test_a_turn_whose_caller_leaves_while_a_tool_runs_answers_every_call(mcp_url: str) -> None:
    """Regression: the history kept the tool call without a result, a conversation no
    provider takes. Each call left unanswered gets a result saying the turn was cut."""
    with redis_server() as store, fake_openai(slow(60), ANSWER) as upstream:
        async with manager(settings(upstream, store.url)) as sessions:
            await connected(sessions, "c-leave", mcp_url)
            tool_running = asyncio.Event()

            async def caller() -> None:
                async for event in await sessions.chat(LOCAL, "c-leave", "Wait a minute."):
                    if isinstance(event, ToolStarted):
                        tool_running.set()

            task = asyncio.create_task(caller())
            await asyncio.wait_for(tool_running.wait(), 30)
            await asyncio.sleep(0.2)  # the call is on its way to the MCP server
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            client = aioredis.Redis.from_url(store.url, decode_responses=True)
            lines = [json.loads(line) for line in await client.lrange("llmchat:history:local:c-leave", 0, -1)]
            await client.aclose()
            assert [line["role"] for line in lines] == ["user", "assistant", "tool"]
            assert lines[1]["tool_calls"][0]["name"] == "slow"
            assert (lines[2]["tool_call_id"], lines[2]["content"]) == ("call_1", CUT_SHORT)
            final = (await turn(sessions, "c-leave", "Are you done?"))[-1]  # the session goes on
            assert isinstance(final, TurnFinal)
            assert final.response == "It is 5."
    sent = upstream.requests[-1]["messages"]
    assert answered(sent)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]


@contextlib.asynccontextmanager
async def service(config: Settings) -> AsyncIterator[tuple[GrpcServer, pb_grpc.ChatSessionServiceAsyncStub]]:
    async with (
        running_service(config, registry=ProviderRegistry.from_settings(config)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield server, pb_grpc.ChatSessionServiceStub(channel)


def connect(user_id: str, mcp_url: str) -> pb.ConnectRequest:
    mcp = pb.McpServer(url=mcp_url, auth_token=MCP_TOKEN)
    return pb.ConnectRequest(user_id=user_id, server=mcp, llm=pb.LLMConfig(provider="openai"))


async def test_a_drain_waits_for_a_turn_in_flight_and_refuses_new_ones(mcp_url: str) -> None:
    with fake_openai(slow(3), ANSWER) as upstream:
        async with service(settings(upstream)) as (server, sessions):
            await sessions.Connect(connect("c-drain", mcp_url))
            call = sessions.StreamChat(pb.StreamChatRequest(user_id="c-drain", message="Wait a moment."))
            kinds = []
            async for event in call:
                kinds.append(event.WhichOneof("event"))
                if kinds[-1] == "tool_start":
                    break
            draining = asyncio.create_task(server.drain(30))
            await asyncio.sleep(0.05)  # it has begun: new turns are refused
            for refused in (
                lambda: sessions.Chat(pb.ChatRequest(user_id="c-drain", message="hi")),
                lambda: sessions.StreamChat(pb.StreamChatRequest(user_id="c-drain", message="hi")).read(),
                lambda: sessions.Connect(connect("c-late", mcp_url)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await refused()
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "the service is shutting down" in (raised.value.details() or "")
            assert not draining.done()  # the turn in flight holds the drain...
            kinds += [event.WhichOneof("event") async for event in call]
            assert kinds[-1] == "final"
            assert "tool_end" in kinds
            await asyncio.wait_for(draining, 10)  # ...and it ends once the turn has
    assert len(upstream.requests) == 2  # the refused turns never reached the model


async def test_a_drain_cuts_a_turn_at_the_end_of_its_grace_and_the_session_goes_on(mcp_url: str) -> None:
    with redis_server() as store, fake_openai(slow(60), ANSWER) as upstream:
        config = settings(upstream, store.url)
        async with service(config) as (server, sessions):
            await sessions.Connect(connect("c-cut", mcp_url))
            call = sessions.StreamChat(pb.StreamChatRequest(user_id="c-cut", message="Wait a minute."))
            async for event in call:
                if event.WhichOneof("event") == "tool_start":
                    break
            await asyncio.sleep(0.2)  # the call is on its way to the MCP server
            await asyncio.wait_for(server.drain(0.5), 10)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                _ = [event async for event in call]  # the rest of the stream, which ends in the error
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # retry elsewhere
            assert "the service is shutting down" in (raised.value.details() or "")
        client = aioredis.Redis.from_url(store.url, decode_responses=True)
        lines = [json.loads(line) for line in await client.lrange("llmchat:history:local:c-cut", 0, -1)]
        await client.aclose()
        assert [line["role"] for line in lines] == ["user", "assistant", "tool"]
        assert (lines[2]["tool_call_id"], lines[2]["content"]) == ("call_1", CUT_SHORT)
        # Another worker (here: the service started again) takes the session over.
        async with service(config) as (_, sessions):
            reply = await sessions.Chat(pb.ChatRequest(user_id="c-cut", message="Are you done?"))
            assert reply.response == "It is 5."
    assert answered(upstream.requests[-1]["messages"])
