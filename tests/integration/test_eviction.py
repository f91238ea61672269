"""When every cache is taken, urgent work evicts a paused sequence, which is recomputed later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.llamacpp.settings import LlamaCppSettings
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import ServerSettings, Settings

from .conftest import eventually


@pytest.fixture(scope="module")
async def tight() -> AsyncIterator[tuple[pb_grpc.LLMServiceStub, LlamaCppProvider]]:
    """A service with one decode slot and one cache: any second sequence must evict."""
    settings = Settings(
        server=ServerSettings(grpc_port=0),
        llamacpp=LlamaCppSettings(n_slots=1, cached_sequences=1, max_sequences=3),
    )
    registry = ProviderRegistry.from_settings(settings)
    provider, _ = registry.resolve("", "")
    assert isinstance(provider, LlamaCppProvider)
    async with (
        running_service(settings, registry=registry) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.LLMServiceStub(channel), provider


def request(prompt: str, *, priority: int, max_tokens: int, seed: int | None = None) -> pb.LLMChatRequest:
    r = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)], max_tokens=max_tokens, priority=priority
    )
    if seed is None:
        r.temperature = 0.0
    else:
        r.temperature, r.top_p, r.seed = 0.9, 0.95, seed
    return r


@pytest.mark.parametrize("seed", [None, 7], ids=["greedy", "seeded"])
async def test_an_evicted_stream_resumes_with_unchanged_output(
    tight: tuple[pb_grpc.LLMServiceStub, LlamaCppProvider], seed: int | None
) -> None:
    stub, provider = tight
    background = request("Write a few lines about the sea.", priority=10, max_tokens=40, seed=seed)
    alone = (await stub.Chat(background)).content
    order: list[str] = []
    tokens = 0
    started = asyncio.Event()

    async def run_background() -> str:
        nonlocal tokens
        text = ""
        async for chunk in stub.StreamChat(background):
            text += chunk.token
            tokens += 1
            if tokens == 5:
                started.set()
        order.append("background")
        return text

    task = asyncio.create_task(run_background())
    await started.wait()
    before = provider.evictions
    urgent = await stub.Chat(request("Say hi.", priority=0, max_tokens=6))
    order.append("interactive")
    text = await task

    assert urgent.completion_tokens > 0
    assert provider.evictions > before  # the one cache went to the urgent request
    assert order == ["interactive", "background"]
    assert text == alone  # recomputed from its tokens, it goes on exactly as it would have


async def test_a_stream_cancelled_while_evicted_frees_its_place(
    tight: tuple[pb_grpc.LLMServiceStub, LlamaCppProvider],
) -> None:
    stub, provider = tight
    started = asyncio.Event()

    async def run_background() -> None:
        async for _ in stub.StreamChat(request("Count to one hundred.", priority=10, max_tokens=200)):
            started.set()

    task = asyncio.create_task(run_background())
    await started.wait()
    before = provider.evictions
    urgent = stub.StreamChat(request("Write a long story.", priority=0, max_tokens=60))
    async for _ in urgent:  # the urgent stream is generating: the background one was evicted
        break
    assert provider.evictions > before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    urgent.cancel()
    await eventually(lambda: provider.held_sequences == 0)  # the evicted one left the engine too
    reply = await stub.Chat(request("Say hi.", priority=5, max_tokens=4))
    assert reply.completion_tokens > 0
