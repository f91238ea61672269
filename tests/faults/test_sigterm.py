"""SIGTERM as operators send it, to `llmservice serve` with its HTTP shim on: both surfaces stop
taking work at once, what is in flight (HTTP streams, gRPC streams) finishes within
server.drain_grace_s, and what outlives the grace is cut with an error its client can read.

The model is a local OpenAI-compatible server streaming one word every half second, so a
stream outlasts the shim's old fixed five seconds; the drain itself is the service's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from ..fakes.openai_server import Reply, fake_openai
from ..servers import MCP_TOKEN, ServeProcess, demo_mcp_server, llmservice_serve

WORDS = 16
PACE_S = 0.5  # 16 words: an 8 s stream
SLOW = Reply(text=" ".join(f"w{i}" for i in range(WORDS)), pace_s=PACE_S)
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def upstream() -> Iterator[str]:
    with fake_openai(SLOW) as fake:
        yield fake.url + "/v1"


def serving(upstream: str, grace_s: float) -> contextlib.AbstractContextManager[ServeProcess]:
    return llmservice_serve(
        "provider=openai",
        f"openai.base_url={upstream}",
        "openai.api_key=k",
        "openai.model=fake-model",
        f"server.drain_grace_s={grace_s}",
        "log_level=WARNING",
        http=True,
    )


def chat_request() -> pb.LLMChatRequest:
    return pb.LLMChatRequest(model="fake-model", messages=[pb.ChatMessage(role="user", content="Hi")])


async def started(stream: openai.AsyncStream[Any]) -> tuple[AsyncIterator[Any], list[str]]:
    """The stream once its first word came, and that word."""
    chunks = stream.__aiter__()
    while not (chunk := await anext(chunks)).choices or not chunk.choices[0].delta.content:
        pass
    return chunks, [chunk.choices[0].delta.content]


async def read_to_the_end(stream: Any) -> None:
    while await stream.read() is not grpc.aio.EOF:
        pass


async def http_rest(chunks: AsyncIterator[Any], words: list[str]) -> tuple[str, str | None]:
    """The rest of an HTTP stream: all its text, and its finish reason."""
    last = None
    async for chunk in chunks:
        if chunk.choices:
            words.append(chunk.choices[0].delta.content or "")
            last = chunk.choices[0].finish_reason or last
    return "".join(words), last


async def grpc_rest(stream: Any, words: list[str]) -> str:
    while (reply := await stream.read()) is not grpc.aio.EOF:
        words.append(reply.token)
    return "".join(words)


async def test_sigterm_stops_taking_work_at_once_and_finishes_what_is_in_flight(upstream: str) -> None:
    """Under load: 6 HTTP streams and 4 gRPC streams in flight when SIGTERM comes."""
    with serving(upstream, grace_s=30) as served:
        async with (
            openai.AsyncOpenAI(api_key="none", base_url=served.base_url + "/v1", max_retries=0) as client,
            grpc.aio.insecure_channel(served.target) as channel,
        ):
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            http_streams = [
                await started(
                    await client.chat.completions.create(model="fake-model", messages=HI, stream=True)
                )
                for _ in range(6)
            ]
            stub = pb_grpc.LLMServiceStub(channel)
            grpc_streams = [stub.StreamChat(chat_request()) for _ in range(4)]
            grpc_words = [[(await stream.read()).token] for stream in grpc_streams]

            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # At once: gRPC health says NOT_SERVING, new gRPC calls are refused, the HTTP
            # listener is closed.
            status = await asyncio.wait_for(watch.read(), 2)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Chat(chat_request())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            async with httpx.AsyncClient() as http:
                with pytest.raises(httpx.ConnectError):
                    await http.get(served.base_url + "/v1/models")
            assert time.monotonic() - signalled < 3

            # What was in flight runs to its end, past the five seconds the shim used to allow.
            http_ends = await asyncio.gather(*(http_rest(chunks, words) for chunks, words in http_streams))
            grpc_texts = await asyncio.gather(
                *(grpc_rest(s, w) for s, w in zip(grpc_streams, grpc_words, strict=True))
            )
            finished = time.monotonic() - signalled
    for text, last in http_ends:
        assert last == "stop"
        assert text.split() == SLOW.text.split()
    for text in grpc_texts:
        assert text.split() == SLOW.text.split()
    assert finished > 5
    assert served.proc.wait(30) == 0


async def test_a_stream_that_outlives_the_grace_is_cut_with_an_error_and_the_process_exits(
    upstream: str,
) -> None:
    with serving(upstream, grace_s=2) as served:
        async with (
            openai.AsyncOpenAI(api_key="none", base_url=served.base_url + "/v1", max_retries=0) as client,
            grpc.aio.insecure_channel(served.target) as channel,
        ):
            http_stream = await client.chat.completions.create(model="fake-model", messages=HI, stream=True)
            http_chunks, _ = await started(http_stream)
            grpc_stream = pb_grpc.LLMServiceStub(channel).StreamChat(chat_request())
            await grpc_stream.read()
            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            with pytest.raises(openai.APIError) as cut_http:
                async for _ in http_chunks:
                    pass
            with pytest.raises(grpc.aio.AioRpcError) as cut_grpc:
                await read_to_the_end(grpc_stream)
            cut_after = time.monotonic() - signalled
        code = served.proc.wait(30)
    assert "shutting down" in str(cut_http.value) or "draining" in str(cut_http.value)
    assert cut_grpc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert cut_after < 2 + 3  # the grace, and a moment to say so
    assert code == 0


@contextlib.contextmanager
def session_service(seconds: float, grace_s: float) -> Iterator[tuple[ServeProcess, str]]:
    """A served process whose model asks for the demo MCP server's `slow` tool, then answers."""
    call = ("call_1", "slow", json.dumps({"seconds": seconds}))
    with (
        fake_openai(Reply(tool_calls=[call]), Reply(text="Waited as asked.")) as fake,
        demo_mcp_server(only=("slow",)) as mcp_url,
        llmservice_serve(
            "provider=openai",
            f"openai.base_url={fake.url}/v1",
            "openai.api_key=k",
            "openai.model=fake-model",
            'llmchat.allowed_hosts=["127.0.0.1"]',
            f"server.drain_grace_s={grace_s}",
            "log_level=WARNING",
            http=True,
        ) as served,
    ):
        yield served, mcp_url


async def turn_events(http: httpx.AsyncClient, mcp_url: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Connect `ada`, then stream one turn's SSE events."""
    body = {"user_id": "ada", "server": {"url": mcp_url, "auth_token": MCP_TOKEN}, "streaming": True}
    assert (await http.post("/llmchat/connect", json=body)).status_code == 200
    chat = {"user_id": "ada", "message": "Wait a while, then say so.", "streaming": True}
    async with http.stream("POST", "/llmchat/chat", json=chat) as reply:
        assert reply.status_code == 200
        event = ""
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield event, json.loads(line.removeprefix("data: "))


async def test_a_session_turn_in_a_tool_call_finishes_within_the_grace() -> None:
    with session_service(seconds=7, grace_s=30) as (served, mcp_url):
        async with httpx.AsyncClient(base_url=served.base_url, timeout=60) as http:
            seen: list[str] = []
            signalled = 0.0
            async for event, data in turn_events(http, mcp_url):
                seen.append(event)
                if event == "tool_start":
                    served.proc.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                if event == "final":
                    final = data
            finished = time.monotonic() - signalled
        code = served.proc.wait(30)
    assert seen.index("tool_start") < seen.index("tool_end") < seen.index("final") == len(seen) - 1
    assert final["content"] == "Waited as asked."
    assert finished > 5  # past the shim's old fixed cut
    assert code == 0


async def test_a_session_turn_that_outlives_the_grace_ends_with_an_error_event() -> None:
    with session_service(seconds=30, grace_s=2) as (served, mcp_url):
        async with httpx.AsyncClient(base_url=served.base_url, timeout=60) as http:
            seen: list[tuple[str, dict[str, Any]]] = []
            async for event, data in turn_events(http, mcp_url):
                seen.append((event, data))
                if event == "tool_start":
                    served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(30)
    event, data = seen[-1]
    assert event == "error", seen
    assert data["recoverable"] is True
    assert data["status"] == 503
    assert code == 0
