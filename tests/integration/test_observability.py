"""Request ids, traces and logs across the shim, the service and a provider.

Real servers in one process: the shim, the gRPC service, and the fake OpenAI upstream,
which records the headers each call brought (x-request-id, traceparent).
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket

import grpc
import httpx
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, get_current_span
from pydantic import SecretStr

from llmservice._pb.llmservice.v1 import chat_session_pb2 as session_pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as session_grpc
from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.observability.logs import RequestIdFilter, enable_payloads, formatter, secrets_of
from llmservice.observability.settings import LogSettings, TracingSettings
from llmservice.observability.tracing import Tracing
from llmservice.providers.openai_family.settings import OpenAISettings
from llmservice.rest.server import running_shim
from llmservice.service.sessions.mcp_client import McpConnection, ServerSpec
from llmservice.service.settings import LLMChatSettings, ServerSettings, Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply
from ..servers import MCP_TOKEN, demo_mcp_server

KEY = "sk-live-OBSERVE-0123456789abcdefXYZ"
ASK = {"model": "gpt-test", "messages": [{"role": "user", "content": "count to three"}]}


def config(upstream_url: str, *, payloads: bool = False) -> Settings:
    return Settings(
        provider="openai",
        server=ServerSettings(grpc_port=0, metrics_port=-1),
        openai=OpenAISettings(
            api_key=SecretStr(KEY), base_url=upstream_url + "/v1", model="gpt-test", max_attempts=1
        ),
        logs=LogSettings(format="json", payloads=payloads),
    )


GIVEN = "0b5e2c1e-6a0b-4c8e-9d3e-2f1a7c9b8d40"  # a caller's id in UUID form


async def test_one_request_id_from_the_shim_through_the_service_to_the_provider() -> None:
    replies = (Reply(text="one two three"), Reply(status=503, error="busy"), Reply(text="4"), Reply(text="5"))
    with fake_openai(*replies) as upstream:
        settings = config(upstream.url)
        async with (
            running_service(settings) as server,
            running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            given = await http.post("/v1/chat/completions", json=ASK, headers={"x-request-id": GIVEN})
            made = await http.post("/v1/chat/completions", json=ASK)  # the upstream's 503
            forged = await http.post("/v1/chat/completions", json=ASK, headers={"x-request-id": "<b>" * 10})
            own = await http.post("/v1/chat/completions", json=ASK, headers={"x-request-id": "req-42.a"})

    assert given.status_code == 200
    assert given.headers["x-request-id"] == GIVEN
    assert upstream.headers[0]["x-request-id"] == GIVEN  # the provider call carried it
    assert made.status_code == 503
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32
    assert upstream.headers[1]["x-request-id"] == made_id
    assert forged.headers["x-request-id"] != "<b>" * 10  # a caller's id that is not plain is replaced
    # An id that is no UUID is the request's (reply header, logs) but stays off the upstream
    # call: some servers (llama-cpp-python's) refuse such ids with a 400.
    assert own.headers["x-request-id"] == "req-42.a"
    assert "x-request-id" not in upstream.headers[3]
    assert "traceparent" not in upstream.headers[0]  # tracing is off


async def test_grpc_calls_get_their_request_id_back_in_the_trailers() -> None:
    with fake_openai(
        Reply(text="one two"), Reply(text="one two"), Reply(status=429, error="slow down")
    ) as up:
        async with (
            running_service(config(up.url)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = pb_grpc.LLMServiceStub(channel)
            request = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="hi")])
            unary = stub.Chat(request, metadata=(("x-request-id", "grpc-1"),))
            await unary
            stream = stub.StreamChat(request, metadata=(("x-request-id", "grpc-2"),))
            assert [c async for c in stream]
            failing = stub.Chat(request)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await failing

    assert ("x-request-id", "grpc-1") in tuple(await unary.trailing_metadata())
    assert ("x-request-id", "grpc-2") in tuple(await stream.trailing_metadata())
    trailers = dict(failed.value.trailing_metadata() or ())
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(trailers["x-request-id"]) == 32  # made by the service, beside the error's own facts
    # ids that are no UUIDs stay off the upstream calls; the service's own (a UUID) goes along
    assert [h.get("x-request-id") for h in up.headers] == [None, None, trailers["x-request-id"]]


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_trace_runs_from_the_shim_through_the_service_to_the_provider() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(TracingSettings(exporter="otlp"), exporter)
    incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with fake_openai(Reply(text="one two three")) as upstream:
        async with (
            running_service(config(upstream.url), tracing=tracing) as server,
            running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0, tracing) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            reply = await http.post(
                "/v1/chat/completions",
                json={**ASK, "stream": True},
                headers={"traceparent": f"00-{incoming_trace}-00f067aa0ba902b7-01"},
            )
            assert reply.status_code == 200
    tracing.shutdown()

    spans = exporter.get_finished_spans()
    (http_span,) = [s for s in spans if s.name.startswith("POST ")]
    assert str(dict(http_span.attributes or {})["http.route"]).endswith("/chat/completions")
    (llm,) = by_name(spans, "llm.request")
    assert {s.context.trace_id for s in spans} == {int(incoming_trace, 16)}  # the caller's trace, kept
    assert llm.parent is not None
    assert llm.parent.span_id == http_span.context.span_id
    attributes = dict(llm.attributes or {})
    assert attributes["llm.provider"] == "openai"
    assert attributes["llm.model"] == "gpt-test"
    assert attributes["llm.usage.completion_tokens"] > 0
    assert attributes["rpc.method"] == "StreamChat"
    assert attributes["llm.request_id"] == dict(http_span.attributes or {})["llm.request_id"]
    assert [e.name for e in llm.events] == ["llm.token"] * 3  # "one ", "two ", "three"
    assert dict(http_span.attributes or {})["http.response.status_code"] == 200
    # The provider call carries the same trace, as a child of llm.request.
    _, trace_id, parent_id, _ = upstream.headers[0]["traceparent"].split("-")
    assert int(trace_id, 16) == llm.context.trace_id
    assert int(parent_id, 16) == llm.context.span_id


async def test_each_model_call_of_a_session_turn_is_a_span_inside_the_turns() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(TracingSettings(exporter="otlp"), exporter)
    settings = config("").model_copy(update={"llmchat": LLMChatSettings(allowed_hosts=["127.0.0.1"])})
    with fake_openai(Reply(text="one two three")) as upstream, demo_mcp_server() as mcp_url:
        settings = settings.model_copy(
            update={"openai": settings.openai.model_copy(update={"base_url": upstream.url + "/v1"})}
        )
        async with (
            running_service(settings, tracing=tracing) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            sessions = session_grpc.ChatSessionServiceStub(channel)
            mcp = session_pb.McpServer(url=mcp_url, transport="streamable_http", auth_token=MCP_TOKEN)
            await sessions.Connect(
                session_pb.ConnectRequest(
                    user_id="traced", server=mcp, llm=session_pb.LLMConfig(provider="openai")
                )
            )
            reply = await sessions.Chat(session_pb.ChatRequest(user_id="traced", message="Count to three."))
            assert reply.response == "one two three"
    tracing.shutdown()

    spans = exporter.get_finished_spans()
    (turn,) = [s for s in spans if s.name == "llmservice.v1.ChatSessionService/Chat"]
    (step,) = by_name(spans, "llm.request")
    assert step.parent is not None
    assert step.parent.span_id == turn.context.span_id
    attributes = dict(step.attributes or {})
    assert attributes["llm.step"] == 0
    assert attributes["llm.provider"] == "openai"
    assert attributes["llm.model"] == "gpt-test"
    assert attributes["llm.usage.completion_tokens"] > 0
    # The provider call is the step's child.
    _, trace_id, parent_id, _ = upstream.headers[0]["traceparent"].split("-")
    assert int(trace_id, 16) == step.context.trace_id
    assert int(parent_id, 16) == step.context.span_id


async def test_secrets_stay_out_of_the_logs_even_with_payloads_on() -> None:
    captured = io.StringIO()
    replies = [
        Reply(status=401, error=f"Incorrect API key provided: {KEY}"),
        Reply(status=500, error=f"upstream failed for key {KEY[:12]}...{KEY[-14:]}"),
        Reply(status=400, error=f"bad request from {KEY}"),
        Reply(text=f"your key is {KEY}"),
    ]
    with fake_openai(*replies) as upstream:
        settings = config(upstream.url, payloads=True)
        handler = logging.StreamHandler(captured)
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(formatter("json", secrets_of(settings)))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        enable_payloads(True)
        try:
            async with (
                running_service(settings) as server,
                running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0) as port,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
            ):
                leaky = {**ASK, "messages": [{"role": "user", "content": f"my key is {KEY}"}]}
                statuses = [
                    (await http.post("/v1/chat/completions", json=leaky, headers={"x-request-id": f"r{i}"}))
                    for i in range(4)
                ]
        finally:
            enable_payloads(False)
            root.removeHandler(handler)
            root.setLevel(old_level)

    assert [r.status_code for r in statuses] == [502, 503, 400, 200]
    text = captured.getvalue()
    assert "llmservice.payloads" in text  # debug payload lines were written
    assert '"request_id": "r1"' in text  # failures are logged under their request's id
    for i in range(len(KEY) - 7):
        assert KEY[i : i + 8] not in text, KEY[i : i + 8]


async def test_mcp_tool_calls_carry_the_trace_to_the_server() -> None:
    """The MCP SDK puts the current span's context into each call's `_meta`; the server's
    tool sees it as its own trace."""
    probe = MCPServer("trace-probe")

    @probe.tool()
    def trace_id() -> str:
        """The trace the call arrived in."""
        return f"{get_current_span().get_span_context().trace_id:032x}"

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(probe.streamable_http_app(), log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    tracing = Tracing.create(TracingSettings(exporter="otlp"), InMemorySpanExporter())
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    connection = McpConnection(ServerSpec(url, "streamable_http"), connect_timeout_s=10, tool_timeout_s=10)
    try:
        while not server.started:  # noqa: ASYNC110 -- uvicorn has no event for it
            await asyncio.sleep(0.01)
        await connection.open()
        with tracing.span("turn", {}, {}, SpanKind.SERVER) as span:
            outcome = await connection.call("trace_id", {})
    finally:
        await connection.aclose()
        server.should_exit = True
        await task
        sock.close()
    assert outcome.text == f"{span.get_span_context().trace_id:032x}"
