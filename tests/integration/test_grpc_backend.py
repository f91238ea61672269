"""The `grpc` provider: a gateway llmservice forwarding to a second one (the shared service,
on the real bundled model) loses nothing on the way: text, token signals, usage, tool
calls, models, embeddings, errors with their codes, deadlines and cancellation; and it
speaks the published `protocol.LLMService` too. A backend killed mid-stream is UNAVAILABLE
to the caller, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_ID
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..servers import llmservice_serve
from .conftest import Service

QUESTION = [pb.ChatMessage(role="user", content="What is 2 plus 3?")]
LONG = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="user", content="Tell a very long story.")], max_tokens=2000
)


def greedy(**fields: Any) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(messages=QUESTION, max_tokens=12, temperature=0.0, seed=7, **fields)


@contextlib.asynccontextmanager
async def gateway(target: str, **backend: Any) -> AsyncIterator[pb_grpc.LLMServiceStub]:
    """A second service whose default provider is a `grpc` deployment in front of `target`."""
    settings = Settings.model_validate(
        {
            "server": {"grpc_port": 0},
            "provider": "gpu",
            "deployments": {"gpu": {"provider": "grpc", "target": target, "max_attempts": 1, **backend}},
        }
    )
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.LLMServiceStub(channel)


def without_timing(chunks: list[pb.LLMChatChunk]) -> list[pb.LLMChatChunk]:
    """The chunks with what differs between any two runs cleared: the provider's name, and the
    prompt tokens found cached (which slot a run lands in, and what ran there before)."""
    out = []
    for chunk in chunks:
        copy = pb.LLMChatChunk()
        copy.CopyFrom(chunk)
        copy.ClearField("provider")
        copy.ClearField("cached_prompt_tokens")
        out.append(copy)
    return out


async def test_a_stream_through_two_hops_is_the_direct_one_signals_and_all(
    service: Service, stub: pb_grpc.LLMServiceStub
) -> None:
    request = greedy(signal_options=pb.SignalOptions(top_k=3), priority=2)
    direct = [c async for c in stub.StreamChat(request)]
    async with gateway(service.target) as forwarded:
        hopped = [c async for c in forwarded.StreamChat(request)]
        whole = await forwarded.Chat(greedy())
    assert "".join(c.token for c in hopped) == "".join(c.token for c in direct)
    assert "5" in "".join(c.token for c in hopped)  # an answer, not noise
    assert without_timing(hopped) == without_timing(direct)
    assert any(c.signal.top_k for c in hopped)
    assert (hopped[-1].done, hopped[-1].provider) == (True, "gpu")
    assert whole.content == "".join(c.token for c in direct)
    assert whole.provider == "gpu"
    assert whole.prompt_tokens == hopped[-1].prompt_tokens


async def test_models_and_token_counts_are_the_backends(
    service: Service, stub: pb_grpc.LLMServiceStub
) -> None:
    direct = await stub.ListModels(pb.ListModelsRequest())
    count = await stub.CountTokens(greedy())
    async with gateway(service.target) as forwarded:
        models = await forwarded.ListModels(pb.ListModelsRequest())
        counted = await forwarded.CountTokens(greedy())
    local = {m.id for m in direct.models if m.provider == "llamacpp"}
    assert local <= {m.id for m in models.models if m.provider == "gpu"}
    assert counted.input_tokens == count.input_tokens > 0


async def test_the_backends_errors_keep_their_codes(service: Service) -> None:
    async with gateway(service.target) as forwarded:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await forwarded.Chat(greedy(model="no-such-model"))
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await forwarded.Chat(pb.LLMChatRequest(messages=QUESTION, temperature=-1.0))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in (unknown.value.details() or "")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_callers_deadline_reaches_the_backend(service: Service) -> None:
    long = LONG
    async with gateway(service.target) as forwarded:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in forwarded.StreamChat(long, timeout=1.0):
                pass
        took = time.monotonic() - started
        after = await forwarded.Chat(greedy())  # the backend is free again
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 5, took
    assert after.content


async def test_leaving_a_stream_stops_the_backend(service: Service) -> None:
    long = LONG
    async with gateway(service.target) as forwarded:
        before = service.tokens_generated
        call = forwarded.StreamChat(long)
        async for _ in call:
            break
        call.cancel()
        await asyncio.sleep(1.0)
        stopped_at = service.tokens_generated
        await asyncio.sleep(1.0)
    assert service.tokens_generated == stopped_at  # nothing generated for nobody
    assert stopped_at - before < LONG.max_tokens


async def test_the_published_plugin_contract_is_spoken_too(service: Service) -> None:
    async with gateway(service.target, service="protocol", model="") as forwarded:
        chunks = [c async for c in forwarded.StreamChat(greedy())]
        models = await forwarded.ListModels(pb.ListModelsRequest())
    assert "5" in "".join(c.token for c in chunks)
    assert chunks[-1].provider == "gpu"
    assert [m.provider for m in models.models if m.provider == "gpu"]


async def test_a_backend_killed_mid_stream_is_unavailable_at_once() -> None:
    with llmservice_serve("llamacpp.n_threads=1") as backend:
        long = LONG
        async with gateway(backend.target) as forwarded:
            call = forwarded.StreamChat(long)
            async for _ in call:
                break
            backend.proc.send_signal(signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in call:
                    pass
            took = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError) as next_call:
                await forwarded.Chat(greedy(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
    assert took < 5, took
    assert next_call.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_backend_down_at_start_is_unavailable_until_it_is_back() -> None:
    """The gateway starts all the same (its model is configured); calls fail, then work."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with gateway(f"127.0.0.1:{port}", model=BUNDLED_MODEL_ID, connect_timeout_s=1) as forwarded:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await forwarded.Chat(greedy(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        with llmservice_serve("llamacpp.n_threads=1", grpc_port=port) as backend:
            assert backend.grpc_port == port
            reply, codes = None, []
            deadline = time.monotonic() + 10  # the gateway reconnects within its backoff (2 s at most)
            while reply is None and time.monotonic() < deadline:
                try:
                    reply = await forwarded.Chat(greedy(), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
                    await asyncio.sleep(0.2)
    assert reply is not None
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
    assert "5" in reply.content
