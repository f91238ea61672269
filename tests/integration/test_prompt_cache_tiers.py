"""Prompt caching under pressure: the host tier, eviction, and who may reuse whose cache."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from .conftest import eventually
from .test_prompt_cache import SYSTEM, Run, ask, cold, msg, run

pytestmark = pytest.mark.integration

HOST_MB = 20  # a ~350-token cache is ~8 MB of state: two fit, a third pushes the oldest out


@asynccontextmanager
async def serving(settings: dict[str, Any]) -> AsyncIterator[tuple[pb_grpc.LLMServiceStub, LlamaCppProvider]]:
    s = Settings.model_validate({"server": {"grpc_port": 0}, **settings})
    registry = ProviderRegistry.from_settings(s)
    provider, _ = registry.resolve("", "")
    assert isinstance(provider, LlamaCppProvider)
    async with (
        running_service(s, registry=registry) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.LLMServiceStub(channel), provider


@pytest.fixture(scope="module")
async def tight() -> AsyncIterator[tuple[pb_grpc.LLMServiceStub, LlamaCppProvider]]:
    """One decode slot and one cache stream: every other prompt pushes the kept cache out."""
    llamacpp = {"n_slots": 1, "cached_sequences": 1, "max_sequences": 3, "prompt_cache_mb": HOST_MB}
    async with serving({"llamacpp": llamacpp}) as served:
        yield served


def question(i: int) -> list[pb.ChatMessage]:
    return [msg("system", SYSTEM), msg("user", f"Question {i}: which bread goes with dish number {i}?")]


async def test_a_cache_pushed_to_host_memory_is_restored_exactly(
    tight: tuple[pb_grpc.LLMServiceStub, LlamaCppProvider],
) -> None:
    stub, provider = tight
    partition = uuid.uuid4().hex
    evicted = provider.prompt_cache_evictions
    first = await run(stub, ask(question(1), partition))
    await eventually(lambda: not provider.warming)
    # The only stream is needed (by another partition's request; or, idle, the engine frees
    # it ahead of time): the first cache goes to host memory.
    await run(stub, ask(question(2), uuid.uuid4().hex))
    assert provider.prompt_cache_evictions > evicted
    assert 0 < provider.prompt_cache_host_bytes <= HOST_MB << 20
    again = await run(stub, ask(question(1), partition))
    assert again.tokens == first.tokens
    assert again.cached == again.prompt_tokens  # restored, last logits and all


async def test_the_host_tier_never_exceeds_its_budget(
    tight: tuple[pb_grpc.LLMServiceStub, LlamaCppProvider],
) -> None:
    stub, provider = tight
    dropped = provider.prompt_cache_host_evictions
    for i in range(10, 15):
        await run(stub, ask(question(i), uuid.uuid4().hex, max_tokens=2))
        assert provider.prompt_cache_host_bytes <= HOST_MB << 20
    assert provider.prompt_cache_host_evictions > dropped


async def test_kept_caches_never_hold_up_running_work(
    tight: tuple[pb_grpc.LLMServiceStub, LlamaCppProvider],
) -> None:
    """A kept cache gives its stream up at once: no running sequence is evicted for it."""
    stub, provider = tight
    await run(stub, ask(question(20), uuid.uuid4().hex))  # a cache is kept in the only stream
    evictions = provider.evictions
    requests = [ask(question(21 + i), uuid.uuid4().hex, max_tokens=8) for i in range(3)]
    expected = [await cold(stub, r) for r in requests]
    results = await asyncio.gather(*(run(stub, r) for r in requests))
    assert [r.tokens for r in results] == [e.tokens for e in expected]
    assert provider.evictions == evictions  # equal priorities: each waited its turn, none was evicted


KEY_A, KEY_B = "key-a-prompt-cache", "key-b-prompt-cache"


def principals() -> dict[str, Any]:
    digest = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    return {"principals": {"a": {"key_sha256": digest(KEY_A)}, "b": {"key_sha256": digest(KEY_B)}}}


async def as_principal(stub: pb_grpc.LLMServiceStub, key: str, request: pb.LLMChatRequest) -> Run:
    chunks = [c async for c in stub.StreamChat(request, metadata=(("authorization", f"Bearer {key}"),))]
    *tokens, last = chunks
    return Run(
        "",
        [c.SerializeToString(deterministic=True) for c in tokens],
        last.prompt_tokens,
        last.cached_prompt_tokens,
    )


@pytest.mark.parametrize("shared", [False, True], ids=["per-principal", "shared"])
async def test_one_principals_cache_serves_another_only_when_sharing_is_on(shared: bool) -> None:
    async with serving({"auth": principals(), "llamacpp": {"prompt_cache_shared": shared}}) as (
        stub,
        provider,
    ):
        request = ask(question(30), "")
        runs = []
        for key in (KEY_A, KEY_B, KEY_A):
            runs.append(await as_principal(stub, key, request))
            await eventually(lambda: not provider.warming)  # as a user pauses between requests
        a, b, a_again = runs
        assert a.cached == 0
        assert a_again.cached == a.prompt_tokens
        assert b.cached == (b.prompt_tokens if shared else 0)
        assert a.tokens == b.tokens == a_again.tokens
        salted = ask(question(30), "another-salt")  # a salt partitions even when sharing is on
        assert (await as_principal(stub, KEY_B, salted)).cached == 0
