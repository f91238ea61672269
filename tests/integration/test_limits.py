"""Budgets and rate limits through the real surfaces: gRPC, the shim's OpenAI API, and two
service processes sharing one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest
import redis.asyncio as aioredis

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.rest.server import running_shim
from llmservice.service.limits.rate_limit import Bucket
from llmservice.service.limits.redis_store import RedisStore, SharedStore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.openai_server import fake_openai
from ..fakes.words_provider import Words
from ..servers import ServeProcess, llmservice_serve, redis_server

HELLO = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="hi")], max_tokens=3)
# The fake's replies cost $0.000016 (10 tokens in at $1 per million, 3 out at $2): a budget of
# $0.00004 pays for two, and the estimate of a third (~$0.000011) does not fit in what is left.
BUDGETED = {
    "server": {"grpc_port": 0, "http_port": -1, "drain_grace_s": 1},
    "embeddings": {"cache": False},
    "pricing": {"fake/*": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
    "limits": {"principals": {"local": {"budget_usd": 0.00004, "budget_period": "day"}}},
}


@contextlib.asynccontextmanager
async def service(config: dict[str, object]) -> AsyncIterator[str]:
    provider = Words()
    registry = ProviderRegistry({provider.name: provider}, provider.name)
    async with running_service(Settings(**config), registry=registry) as server:  # type: ignore[arg-type]
        yield f"127.0.0.1:{server.port}"


async def test_a_budget_stops_the_next_grpc_call_with_resource_exhausted() -> None:
    async with service(BUDGETED) as target, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        assert (await stub.Chat(HELLO)).completion_tokens == 3
        chunks = [c async for c in stub.StreamChat(HELLO)]
        assert chunks[-1].completion_tokens == 3
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Chat(HELLO)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget exhausted" in (refused.value.details() or "")
        trailers = dict(refused.value.trailing_metadata() or ())
        assert trailers["llm-error-kind"] == "insufficient_quota"
        assert float(trailers["retry-after"]) <= 86_400  # when the day's budget comes back
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            _ = [c async for c in stub.StreamChat(HELLO)]
        assert streamed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_budget_stops_the_next_shim_request_with_a_429_in_openais_shape() -> None:
    async with (
        service(BUDGETED) as target,
        running_shim(target, "127.0.0.1", 0) as port,
        openai.AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0) as client,
    ):
        messages = [{"role": "user", "content": "hi"}]
        for _ in range(2):
            await client.chat.completions.create(model="", messages=messages, max_tokens=3)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="", messages=messages, max_tokens=3)  # type: ignore[arg-type]
        assert refused.value.status_code == 429
        assert refused.value.code == "insufficient_quota"
        assert "budget exhausted" in refused.value.message
        assert int(refused.value.response.headers["retry-after"]) >= 1
        # a stream is refused before its first byte: a 429 too, not a 200 that breaks off
        async with httpx.AsyncClient() as http:
            body = {"model": "", "messages": messages, "max_tokens": 3, "stream": True}
            answer = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
        assert answer.status_code == 429
        assert answer.json()["error"]["type"] == "insufficient_quota"


async def test_the_redis_buckets_match_the_memory_ones_on_a_fake_clock() -> None:
    with redis_server() as store:
        client = aioredis.Redis.from_url(store.url, decode_responses=True)
        shared, now = RedisStore(client), 1_000_000.0
        both = [Bucket("rpm:a", 2, 1), Bucket("tpm:a", 100, 60)]
        assert await shared.take(both, now) == 0
        assert await shared.take(both, now) == pytest.approx((60 - 40) * 60 / 100)  # tpm: 40 left
        assert await shared.take([Bucket("rpm:a", 2, 1)], now) == 0  # nothing was taken by the refusal
        assert await shared.take([Bucket("rpm:a", 2, 1)], now) == pytest.approx(30)
        await shared.give_back("tpm:a", 100, -50, now)  # used 50 more than estimated: 10 in debt
        assert await shared.take([Bucket("tpm:a", 100, 10)], now + 6) == pytest.approx(6)
        assert await shared.reserve("budget:a", 0.6, 1.0, 60) is None
        assert await shared.reserve("budget:a", 0.6, 1.0, 60) == pytest.approx(0.6)
        await shared.add("budget:a", -0.1, 60)
        assert await shared.spent("budget:a") == pytest.approx(0.5)
        assert 0 < await client.ttl("llm:limits:budget:a") <= 60
        await client.aclose()


async def test_with_redis_gone_limits_go_on_in_memory_and_say_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with redis_server() as store:
        client = aioredis.Redis.from_url(store.url, decode_responses=True, socket_connect_timeout=1)
        shared = SharedStore(client)
        one = [Bucket("rpm:b", 1, 1)]
        assert await shared.take(one, 0.0) == 0
        store.kill()
        with caplog.at_level(logging.WARNING, logger="llmservice.service.sessions.fallback"):
            assert await shared.take(one, 0.0) == 0  # memory has seen nothing yet
            assert await shared.take(one, 0.0) > 0  # but holds the limit from now on
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
        assert "rate limits and budgets kept in memory" in caplog.text
        await client.aclose()


def serve_settings(upstream_url: str, redis_url: str) -> list[str]:
    return [
        "provider=openai",
        "openai.api_key=sk-test",
        f"openai.base_url={upstream_url}/v1",
        "openai.model=fake-model",
        f"cache.redis_url={redis_url}",
        "limits.principals.local.requests_per_minute=3",
        "embeddings.cache=false",
        "log_level=WARNING",
    ]


async def call(worker: ServeProcess) -> grpc.aio.AioRpcError | None:
    async with grpc.aio.insecure_channel(worker.target) as channel:
        try:
            await pb_grpc.LLMServiceStub(channel).Chat(HELLO, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


async def test_rate_limits_hold_across_two_service_processes_sharing_redis() -> None:
    with redis_server() as store, fake_openai() as upstream:
        config = serve_settings(upstream.url, store.url)
        with llmservice_serve(*config) as first, llmservice_serve(*config) as second:
            outcomes = [await call(w) for w in (first, second, first)]
            assert outcomes == [None, None, None]  # three a minute, whoever serves them
            refused = await asyncio.gather(call(second), call(first))
            for exc in refused:
                assert exc is not None
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "rate limit" in (exc.details() or "")
                trailers = dict(exc.trailing_metadata() or ())
                assert trailers["llm-error-kind"] == "rate_limit_exceeded"
                assert 0 < float(trailers["retry-after"]) <= 20  # one request refills in 60/3 s
        assert len(upstream.requests) == 3  # the refused never reached the provider
