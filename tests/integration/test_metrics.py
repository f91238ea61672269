"""Metrics exposed and moving: the service's metrics port and the shim's /metrics, after real
calls through gRPC and through the shim (a fake OpenAI upstream answers), with no secret
and no user text in any label; calls cut by their deadline or their caller counted too."""

from __future__ import annotations

import asyncio
import logging

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.openai_family.settings import OpenAISettings
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import ServerSettings, Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply
from .conftest import eventually

KEY = "sk-metrics-test-SECRET-4242"
USER_TEXT = "a question only the user wrote"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum over samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


async def test_metrics_move_after_calls_through_grpc_and_http() -> None:
    replies = [
        Reply(text="one two three"),
        Reply(text="four five"),
        Reply(text="six"),
        Reply(status=500, error="upstream broke"),
        Reply(status=404, error="The model does not exist"),
    ]
    with fake_openai(*replies) as upstream:
        config = Settings(
            provider="openai",
            server=ServerSettings(grpc_port=0, metrics_port=0),
            openai=OpenAISettings(
                api_key=SecretStr(KEY), base_url=upstream.url + "/v1", model="gpt-test", max_attempts=1
            ),
        )
        async with (
            running_service(config) as server,
            running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0) as port,
            httpx.AsyncClient(timeout=30) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            shim = f"http://127.0.0.1:{port}"
            ask = {"model": "gpt-test", "messages": [{"role": "user", "content": USER_TEXT}]}
            assert (await http.post(f"{shim}/v1/chat/completions", json=ask)).status_code == 200
            streamed = await http.post(f"{shim}/v1/chat/completions", json={**ask, "stream": True})
            assert streamed.status_code == 200
            stub = pb_grpc.LLMServiceStub(channel)
            message = pb.ChatMessage(role="user", content=USER_TEXT)
            await stub.Chat(pb.LLMChatRequest(messages=[message]))
            failed = await http.post(f"{shim}/v1/chat/completions", json=ask)  # the upstream's 500
            assert failed.status_code >= 500
            not_a_model = await http.post(f"{shim}/v1/chat/completions", json={**ask, "model": USER_TEXT})
            assert not_a_model.status_code == 404

            service_text = (await http.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
            shim_text = (await http.get(f"{shim}/metrics")).text

    found = samples(service_text)
    ok = {"provider": "openai", "model": "gpt-test", "code": "OK"}
    assert value(found, "llmservice_requests_total", method="Chat", surface="http", **ok) == 1
    assert value(found, "llmservice_requests_total", method="StreamChat", surface="http", **ok) == 1
    assert value(found, "llmservice_requests_total", method="Chat", surface="grpc", **ok) == 1
    assert value(found, "llmservice_requests_total", provider="openai", code="UNAVAILABLE") == 1
    # a model that does not exist is no label: the caller's string stays out
    assert value(found, "llmservice_requests_total", code="NOT_FOUND", model="") == 1
    assert value(found, "llmservice_time_to_first_token_seconds_count", provider="openai") == 1
    assert value(found, "llmservice_request_duration_seconds_count", method="Chat") == 4
    assert value(found, "llmservice_generated_tokens_total", provider="openai") > 0
    assert value(found, "llmservice_queue_admitted_total", provider="openai", priority="0") == 5
    assert ("llmservice_queue_depth", frozenset({("provider", "openai"), ("priority", "0")})) in found
    assert value(found, "llmservice_provider_retries_total", provider="openai") == 0
    assert ("llmservice_chat_sessions_active", frozenset()) in found

    shim_found = samples(shim_text)
    route = "/chat/completions"  # the route template, the same under /v1 and without it
    assert value(shim_found, "llmshim_http_requests_total", route=route, status="200") == 2
    assert value(shim_found, "llmshim_http_requests_total", route=route, status="404") == 1
    assert value(shim_found, "llmshim_http_request_duration_seconds_count", route=route) == 4

    for text in (service_text, shim_text):
        assert KEY not in text
        assert USER_TEXT not in text


async def test_calls_cut_by_their_deadline_or_their_caller_are_counted_and_their_usage_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = Settings.model_validate(
        {"server": {"grpc_port": 0, "metrics_port": 0}, "llamacpp": {"n_ctx": 1024, "n_slots": 1}}
    )  # the bundled model
    registry = ProviderRegistry.from_settings(config)
    engine, _ = registry.resolve("", "")
    assert isinstance(engine, LlamaCppProvider)
    story = pb.ChatMessage(role="user", content="Tell a very long story.")
    long = pb.LLMChatRequest(messages=[story], max_tokens=400)
    with caplog.at_level(logging.INFO, logger="llmservice.service.limits.usage"):
        async with (
            running_service(config, registry=registry) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            httpx.AsyncClient(timeout=30) as http,
        ):
            stub = pb_grpc.LLMServiceStub(channel)
            ledger = server.servicer.core.limits.ledger
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.Chat(long, timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await eventually(lambda: ledger.of("local").requests == 1)  # the server saw it too
            with pytest.raises(grpc.aio.AioRpcError) as late_stream:
                async for _ in stub.StreamChat(long, timeout=0.3):
                    pass
            assert late_stream.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await eventually(lambda: ledger.of("local").requests == 2)
            before = engine.tokens_generated
            left = stub.Chat(long)
            await eventually(lambda: engine.tokens_generated > before)  # under way
            left.cancel()
            with pytest.raises(asyncio.CancelledError):
                await left
            await eventually(lambda: ledger.of("local").requests == 3)
            text = (await http.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text

    found = samples(text)
    for method, code, calls in [
        ("Chat", "DEADLINE_EXCEEDED", 1),
        ("StreamChat", "DEADLINE_EXCEEDED", 1),
        ("Chat", "CANCELLED", 1),
    ]:
        assert value(found, "llmservice_requests_total", method=method, code=code) == calls, (method, code)
    assert value(found, "llmservice_requests_total") == 3  # each once, nothing else
    usage = [
        r for r in caplog.records if r.getMessage().startswith("usage principal=local provider=llamacpp")
    ]
    assert len(usage) == 3
    assert not [r for r in usage if "prompt_tokens=0 " in r.getMessage()]  # each read its prompt
