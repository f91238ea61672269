"""Chat sessions over gRPC: real Redis, real MCP servers, the bundled model calling tools."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import redis.asyncio as aioredis

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions.fallback import RETRY_AFTER_S
from llmservice.service.settings import Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply
from ..servers import MCP_TOKEN, RedisServer, demo_mcp_server, redis_server

KEY_A, KEY_B = "key-alice-123", "key-bob-456"
MAX_MESSAGES = 8


def as_(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


ALICE, BOB = as_(KEY_A), as_(KEY_B)
LLM = pb.LLMConfig(provider="llamacpp", temperature=0, max_tokens=48)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


@pytest.fixture(scope="module")
def failing_mcp_url() -> Iterator[str]:
    with demo_mcp_server(only=("fail",)) as url:
        yield url


def session_settings(redis_url: str) -> Settings:
    digest = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B)}
    return Settings.model_validate(
        {
            "server": {"grpc_port": 0},
            "auth": {
                "principals": {"alice": {"key_sha256": digest[KEY_A]}, "bob": {"key_sha256": digest[KEY_B]}}
            },
            "cache": {"redis_url": redis_url},
            "llmchat": {
                "allowed_hosts": ["127.0.0.1"],
                "stdio_servers": {
                    "time": [sys.executable, "-m", "mcp_server_time"],
                    # From package.json: `make test` installs it with npm.
                    "everything": ["npx", "--no-install", "@modelcontextprotocol/server-everything", "stdio"],
                },
                "max_steps": 2,
                "chat_history_max_messages": MAX_MESSAGES,
                "chat_history_ttl": 600,
                "tool_timeout_s": 5,
                "secret_key": "test-secret",
            },
        }
    )


@pytest.fixture(scope="module")
async def sessions(redis: RedisServer) -> AsyncIterator[pb_grpc.ChatSessionServiceStub]:
    settings = session_settings(redis.url)
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.ChatSessionServiceStub(channel)


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    yield client
    await client.aclose()


def server(url: str, token: str = MCP_TOKEN, transport: str = "streamable_http") -> pb.McpServer:
    return pb.McpServer(url=url, transport=transport, auth_token=token)


async def test_connect_lists_the_tools(sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str) -> None:
    reply = await sessions.Connect(
        pb.ConnectRequest(user_id="u-connect", server=server(mcp_url), llm=LLM, streaming=True),
        metadata=ALICE,
    )
    assert (reply.status, reply.user_id, reply.provider) == ("connected", "u-connect", "llamacpp")
    assert set(reply.tools) == {"add", "get_weather", "slow", "fail"}
    assert reply.tool_count == 4
    status = await sessions.GetStatus(pb.GetStatusRequest(user_id="u-connect"), metadata=ALICE)
    assert status.connected


async def test_a_stdio_server_from_the_configuration(sessions: pb_grpc.ChatSessionServiceStub) -> None:
    reply = await sessions.Connect(
        pb.ConnectRequest(user_id="u-stdio", server=pb.McpServer(url="time", transport="stdio"), llm=LLM),
        metadata=ALICE,
    )
    assert "get_current_time" in reply.tools
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Connect(
            pb.ConnectRequest(
                user_id="u-stdio", server=pb.McpServer(url="/bin/sh", transport="stdio"), llm=LLM
            ),
            metadata=ALICE,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "llmchat.stdio_servers" in (raised.value.details() or "")


async def test_the_reference_server_everything_over_npx(sessions: pb_grpc.ChatSessionServiceStub) -> None:
    reply = await sessions.Connect(
        pb.ConnectRequest(
            user_id="u-every", server=pb.McpServer(url="everything", transport="stdio"), llm=LLM
        ),
        metadata=ALICE,
    )
    assert {"echo", "get-sum"} <= set(reply.tools)


async def test_an_sse_server_with_a_token(sessions: pb_grpc.ChatSessionServiceStub) -> None:
    with demo_mcp_server(transport="sse") as url:
        reply = await sessions.Connect(
            pb.ConnectRequest(user_id="u-sse", server=server(url, transport="sse"), llm=LLM), metadata=ALICE
        )
        assert reply.tool_count == 4
        answer = await sessions.Chat(pb.ChatRequest(user_id="u-sse", message="Add 1 and 1."), metadata=ALICE)
        assert answer.tool_used
        await sessions.Disconnect(pb.DisconnectRequest(user_id="u-sse"), metadata=ALICE)


async def test_the_bundled_model_calls_a_tool_and_final_comes_last(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-tools", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    turn = sessions.StreamChat(
        pb.StreamChatRequest(user_id="u-tools", message="What is 2 plus 3?"),
        metadata=(*ALICE, ("x-request-id", "turn-1")),
    )
    events = [e async for e in turn]
    assert ("x-request-id", "turn-1") in tuple(await turn.trailing_metadata())  # a streamed turn's too
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "final"
    assert kinds.count("final") == 1
    assert "tool_start" in kinds
    assert "tool_end" in kinds
    assert kinds.index("tool_start") < kinds.index("tool_end")
    final = events[-1].final
    assert final.tool_used
    assert final.tools
    # The right tool with the right numbers, and an answer that says what it gave.
    assert final.tool_invocations == len(final.tool_calls) >= 1
    call = final.tool_calls[0]
    assert (call.tool, json.loads(call.input_json)) == ("add", {"a": 2, "b": 3})
    assert "5" in call.output
    assert call.start <= call.end
    assert call.start.endswith("+00:00")
    assert "5" in final.response, final.response
    assert final.response == "".join(e.token for e in events if e.WhichOneof("event") == "token")
    started = next(e.tool_start for e in events if e.WhichOneof("event") == "tool_start")
    assert started.tool == final.tool_calls[0].tool
    # The turn's tool steps are in the history, in Redis, with its TTL.
    lines = [json.loads(line) for line in await store.lrange("llmchat:history:alice:u-tools", 0, -1)]
    assert lines[0] == {"role": "user", "content": "What is 2 plus 3?"}
    assert any(line.get("tool_calls") for line in lines)
    assert any(line["role"] == "tool" for line in lines)
    assert lines[-1]["role"] == "assistant"
    assert 0 < await store.ttl("llmchat:history:alice:u-tools") <= 600


async def test_a_failing_tool_is_a_tool_error_and_the_turn_goes_on(
    sessions: pb_grpc.ChatSessionServiceStub, failing_mcp_url: str
) -> None:
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-fail", server=server(failing_mcp_url), llm=LLM), metadata=ALICE
    )
    reply = await sessions.Chat(
        pb.ChatRequest(user_id="u-fail", message="Call the fail tool with reason x."), metadata=ALICE
    )
    assert reply.tool_used
    assert reply.tool_calls[0].tool == "fail"
    assert reply.tool_calls[0].is_error
    assert "failed on purpose: " in reply.tool_calls[0].output  # the tool's own words
    events = [
        e
        async for e in sessions.StreamChat(
            pb.StreamChatRequest(user_id="u-fail", message="Again."), metadata=ALICE
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert "tool_error" in kinds
    assert kinds[-1] == "final"


async def test_history_is_trimmed_and_starts_at_a_user_turn(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-trim", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    for i in range(3):
        await sessions.Chat(pb.ChatRequest(user_id="u-trim", message=f"Add {i} and 1."), metadata=ALICE)
    assert await store.llen("llmchat:history:alice:u-trim") == MAX_MESSAGES


async def test_a_wrong_token_is_a_clear_401(sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Connect(
            pb.ConnectRequest(user_id="u-token", server=server(mcp_url, token="wrong"), llm=LLM),
            metadata=ALICE,
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert mcp_url in (raised.value.details() or "")
    assert "wrong" not in (raised.value.details() or "")


async def test_an_unreachable_server_is_unavailable(sessions: pb_grpc.ChatSessionServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Connect(
            pb.ConnectRequest(user_id="u-gone", server=server("http://127.0.0.1:9/mcp"), llm=LLM),
            metadata=ALICE,
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/mcp",
        "http://10.1.2.3/mcp",
        "file:///etc/passwd",
    ],
)
async def test_denied_server_urls_are_refused(sessions: pb_grpc.ChatSessionServiceStub, url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Connect(
            pb.ConnectRequest(user_id="u-ssrf", server=server(url), llm=LLM), metadata=ALICE
        )
    assert raised.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


async def test_another_callers_user_id_is_no_session_of_yours(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, failing_mcp_url: str, store: aioredis.Redis
) -> None:
    """Regression: user ids were global: bob asking for alice's was told it "belongs to
    another caller" (so it exists), and the first to connect a name took it."""
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-alice", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    for user_id in ("u-alice", "u-nobody-has-this"):  # alice's looks like nobody's
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sessions.Chat(pb.ChatRequest(user_id=user_id, message="hi"), metadata=BOB)
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "No active session found. Please connect to a server first.",
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sessions.GetConfig(pb.GetConfigRequest(user_id=user_id), metadata=BOB)
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "No config found for this user.",
        )
        status = await sessions.GetStatus(pb.GetStatusRequest(user_id=user_id), metadata=BOB)
        assert not status.connected
        bye = await sessions.Disconnect(pb.DisconnectRequest(user_id=user_id), metadata=BOB)
        assert (bye.status, bye.was_connected) == ("no_active_session", False)
    # Bob's own u-alice is another session, beside alice's, which it leaves alone.
    bobs = await sessions.Connect(
        pb.ConnectRequest(user_id="u-alice", server=server(failing_mcp_url), llm=LLM), metadata=BOB
    )
    assert list(bobs.tools) == ["fail"]
    alices = await sessions.GetConfig(pb.GetConfigRequest(user_id="u-alice"), metadata=ALICE)
    assert (alices.server.url, len(alices.tools)) == (mcp_url, 4)
    assert await store.exists("llmchat:session:alice:u-alice", "llmchat:session:bob:u-alice") == 2
    await sessions.Disconnect(pb.DisconnectRequest(user_id="u-alice"), metadata=BOB)
    assert (await sessions.GetStatus(pb.GetStatusRequest(user_id="u-alice"), metadata=ALICE)).connected
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.GetStatus(pb.GetStatusRequest(user_id="u-alice"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_refused_turn_leaves_nothing_and_the_next_turn_answers(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    """Regression: a message far over the model's context was kept in the history, so
    every later turn was refused too ("the prompt is N tokens") until a disconnect."""
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-huge", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    huge = "hello " * 6000  # some 6000 tokens; the bundled model holds 4096
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Chat(pb.ChatRequest(user_id="u-huge", message=huge), metadata=ALICE)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the prompt is" in (raised.value.details() or "")
    assert not await store.exists("llmchat:history:alice:u-huge")
    reply = await sessions.Chat(pb.ChatRequest(user_id="u-huge", message="What is 2 plus 3?"), metadata=ALICE)
    assert "5" in reply.response, reply.response
    lines = [json.loads(line) for line in await store.lrange("llmchat:history:alice:u-huge", 0, -1)]
    assert [line["content"] for line in lines if line["role"] == "user"] == ["What is 2 plus 3?"]


async def test_bad_turns_are_refused(sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Chat(pb.ChatRequest(user_id="u-nobody", message="hi"), metadata=ALICE)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "No active session found. Please connect to a server first."
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-empty", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions.Chat(pb.ChatRequest(user_id="u-empty", message="  "), metadata=ALICE)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Message cannot be empty"


async def test_config_masks_secrets_and_redis_holds_none_in_clear(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-config", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    config = await sessions.GetConfig(pb.GetConfigRequest(user_id="u-config"), metadata=ALICE)
    assert config.server.url == mcp_url
    assert config.server.auth_token == "********"
    assert config.llm.provider == "llamacpp"
    assert config.llm.max_tokens == 48
    keys = [k async for k in store.scan_iter("llmchat:*")]
    for key in keys:
        if await store.type(key) == "string":
            assert MCP_TOKEN not in await store.get(key)
        elif await store.type(key) == "list":
            assert all(MCP_TOKEN not in line for line in await store.lrange(key, 0, -1))


async def test_a_sessions_own_provider_key_over_grpc_sealed_in_redis_and_gone_on_disconnect(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    """ChatSessionService field for field with /llmchat: the documented provider settings
    in LLMConfig, the count and the calls in ChatResponse, the documented disconnect."""
    key = "sk-grpc-session-LEAKCANARY-42"
    add = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])
    with fake_openai(add, Reply(text="The sum is 5."), add, Reply(text="It is 5.")) as upstream:
        llm = pb.LLMConfig(provider="openai", model="m", api_key=key, base_url=upstream.url + "/v1")
        connected = await sessions.Connect(
            pb.ConnectRequest(user_id="u-own", server=server(mcp_url), llm=llm), metadata=ALICE
        )
        assert connected.provider == "openai"
        reply = await sessions.Chat(
            pb.ChatRequest(user_id="u-own", message="What is 2 plus 3?"), metadata=ALICE
        )
        assert (reply.response, reply.tool_invocations, list(reply.tools)) == ("The sum is 5.", 1, ["add"])
        assert (reply.tool_calls[0].tool, reply.tool_calls[0].output) == ("add", "5")
        call = sessions.StreamChat(pb.StreamChatRequest(user_id="u-own", message="Again?"), metadata=ALICE)
        assert ("llm-turn", "started") in tuple(await call.initial_metadata())
        events = [e async for e in call]
        assert events[0].tool_start.tool == "add"
        assert events[-1].final.response == "It is 5."
        config = await sessions.GetConfig(pb.GetConfigRequest(user_id="u-own"), metadata=ALICE)
        assert (config.llm.api_key, config.llm.base_url) == ("********", upstream.url + "/v1")
        record = await store.get("llmchat:session:alice:u-own")
        assert record is not None
        assert key not in record  # sealed
        async for name in store.scan_iter("llmchat:*"):
            if await store.type(name) == "string":
                assert key not in str(await store.get(name))
        bye = await sessions.Disconnect(pb.DisconnectRequest(user_id="u-own"), metadata=ALICE)
        assert (bye.status, bye.message, bye.was_connected) == (
            "disconnected",
            "Successfully disconnected",
            True,
        )
        assert await store.get("llmchat:session:alice:u-own") is None
    assert {h["authorization"] for h in upstream.headers} == {f"Bearer {key}"}
    again = await sessions.Disconnect(pb.DisconnectRequest(user_id="u-own"), metadata=ALICE)
    assert (again.status, again.message) == ("no_active_session", "No active session to disconnect")


async def test_disconnect_forgets_the_session_and_its_history(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-bye", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    await sessions.Chat(pb.ChatRequest(user_id="u-bye", message="Add 1 and 1."), metadata=ALICE)
    assert await store.exists("llmchat:history:alice:u-bye")
    reply = await sessions.Disconnect(pb.DisconnectRequest(user_id="u-bye"), metadata=ALICE)
    assert reply.was_connected
    assert not await store.exists("llmchat:history:alice:u-bye", "llmchat:session:alice:u-bye")
    status = await sessions.GetStatus(pb.GetStatusRequest(user_id="u-bye"), metadata=ALICE)
    assert not status.connected


async def test_concurrent_turns_lose_no_history(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, store: aioredis.Redis
) -> None:
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-race", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    asks = ["Add 1 and 2.", "Add 3 and 4."]
    await asyncio.gather(
        *(sessions.Chat(pb.ChatRequest(user_id="u-race", message=a), metadata=ALICE) for a in asks)
    )
    lines = [json.loads(line) for line in await store.lrange("llmchat:history:alice:u-race", 0, -1)]
    # With max_steps=2 a turn adds at most four lines (question, one tool call, its result,
    # the answer), so two turns fit in MAX_MESSAGES: no trim can take a question away.
    assert MAX_MESSAGES >= 2 * 4
    assert len(lines) <= MAX_MESSAGES
    assert sorted(line["content"] for line in lines if line["role"] == "user") == asks
    assert sum(1 for line in lines if line["role"] == "assistant" and not line.get("tool_calls")) == 2


async def test_redis_killed_mid_session_then_restarted(
    sessions: pb_grpc.ChatSessionServiceStub, mcp_url: str, redis: RedisServer, store: aioredis.Redis
) -> None:
    """Runs last in this module: it takes the module's Redis away and brings it back empty."""
    await sessions.Connect(
        pb.ConnectRequest(user_id="u-outage", server=server(mcp_url), llm=LLM), metadata=ALICE
    )
    redis.kill()
    try:
        during = await sessions.Chat(
            pb.ChatRequest(user_id="u-outage", message="Add 5 and 6."), metadata=ALICE
        )
        assert during.response is not None  # the session goes on, history in memory
        status = await sessions.GetStatus(pb.GetStatusRequest(user_id="u-outage"), metadata=ALICE)
        assert status.connected
    finally:
        redis.start()  # back, but empty: it keeps nothing on disk here
    await asyncio.sleep(RETRY_AFTER_S + 0.2)  # the service tries Redis again after this pause
    await sessions.Chat(pb.ChatRequest(user_id="u-outage", message="Add 7 and 8."), metadata=ALICE)
    lines = [json.loads(line) for line in await store.lrange("llmchat:history:alice:u-outage", 0, -1)]
    users = [line["content"] for line in lines if line["role"] == "user"]
    assert users == ["Add 5 and 6.", "Add 7 and 8."]  # what was said during the outage was handed back
    assert await store.exists("llmchat:session:alice:u-outage")
