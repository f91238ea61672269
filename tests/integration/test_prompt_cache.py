"""Prompt caching: a request served from a cached prefix gets the very bits a cold run gets.

Each test works in partitions of its own (a fresh cache_salt), so a "cold" run is one
in a partition where nothing is cached yet, and the session's other tests cannot help.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.observability.metrics import provider_readings

from .conftest import Service, eventually

pytestmark = pytest.mark.integration

# About 330 tokens: past one prefill chunk (256), so prefixes end mid-chunk.
SYSTEM = "You are a careful assistant for a small bakery. " + " ".join(
    f"Rule {i}: answer kindly, briefly and in plain words about bread number {i}." for i in range(20)
)


def salt() -> str:
    return uuid.uuid4().hex


def msg(role: str, content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=role, content=content)


def ask(
    messages: list[pb.ChatMessage], cache_salt: str, *, seed: int | None = 3, max_tokens: int = 20
) -> pb.LLMChatRequest:
    r = pb.LLMChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        cache_salt=cache_salt,
        signal_options=pb.SignalOptions(top_k=5, sampler_stages=True),
    )
    if seed is None:
        r.temperature = 0.0
    else:
        r.temperature, r.top_p, r.seed = 0.9, 0.95, seed
    return r


@dataclass
class Run:
    text: str
    tokens: list[bytes]  # each chunk as sent: text, token id and every signal
    prompt_tokens: int
    cached: int


async def run(stub: pb_grpc.LLMServiceStub, request: pb.LLMChatRequest) -> Run:
    chunks = [c async for c in stub.StreamChat(request)]
    *tokens, last = chunks
    assert last.done
    return Run(
        "".join(c.token for c in tokens),
        [c.SerializeToString(deterministic=True) for c in tokens],
        last.prompt_tokens,
        last.cached_prompt_tokens,
    )


async def cold(stub: pb_grpc.LLMServiceStub, request: pb.LLMChatRequest) -> Run:
    """The same request where nothing is cached."""
    fresh = pb.LLMChatRequest()
    fresh.CopyFrom(request)
    fresh.cache_salt = salt()
    result = await run(stub, fresh)
    assert result.cached == 0
    return result


async def test_an_exact_repeat_is_served_from_cache_with_the_same_tokens_and_signals(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    request = ask([msg("system", SYSTEM), msg("user", "Which bread is best for toast?")], salt())
    first = await run(stub, request)
    assert first.cached == 0
    await eventually(lambda: not service.engine.warming)
    computed = service.engine.prompt_tokens_computed
    again = await run(stub, request)
    assert again.tokens == first.tokens
    assert again.cached > first.prompt_tokens - 64  # at most the last decode is computed again
    assert service.engine.prompt_tokens_computed - computed == again.prompt_tokens - again.cached


async def test_the_next_turn_reuses_the_conversation_and_matches_a_cold_run(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    conversation, partition = [msg("system", SYSTEM)], salt()
    previous_prompt = 0
    for question in ("Name a bread for soup.", "And one for a sandwich?", "Which of them keeps longest?"):
        conversation.append(msg("user", question))
        request = ask(conversation, partition, seed=None, max_tokens=24)
        expected = await cold(stub, request)
        await eventually(lambda: not service.engine.warming)
        computed, warmed = service.engine.prompt_tokens_computed, service.engine.warm_tokens_computed
        turn = await run(stub, request)
        assert turn.tokens == expected.tokens
        assert service.engine.prompt_tokens_computed - computed == turn.prompt_tokens - turn.cached
        if len(conversation) > 2:
            # The earlier turns and the reply (warmed while idle) came from cache, but for
            # at most one tiled decode's worth (64) before the new question.
            assert turn.cached >= previous_prompt - 64
        previous_prompt = turn.prompt_tokens
        conversation.append(msg("assistant", turn.text))
        await eventually(lambda: not service.engine.warming)
        # counted from before the turn: its warming may be over by the time run() returns
        assert service.engine.warm_tokens_computed > warmed


async def test_a_prefix_that_ends_mid_chunk_is_reused_exactly(stub: pb_grpc.LLMServiceStub) -> None:
    partition = salt()
    await run(stub, ask([msg("system", SYSTEM), msg("user", "Tell me about rye.")], partition))
    request = ask([msg("system", SYSTEM), msg("user", "What about spelt flour?")], partition, seed=11)
    expected = await cold(stub, request)
    shared = await run(stub, request)
    assert shared.tokens == expected.tokens
    assert 256 <= shared.cached < shared.prompt_tokens  # past the first chunk, short of the question


@pytest.mark.parametrize("stagger", [False, True], ids=["together", "second-after-first-starts"])
async def test_two_concurrent_requests_sharing_a_prefix_are_both_right(
    stub: pb_grpc.LLMServiceStub, stagger: bool
) -> None:
    partition = salt()
    a = ask([msg("system", SYSTEM), msg("user", "Is sourdough sour?")], partition, seed=5)
    b = ask([msg("system", SYSTEM), msg("user", "Is brioche sweet?")], partition, seed=6)
    expected = [await cold(stub, a), await cold(stub, b)]

    async def second() -> Run:
        if stagger:  # the first is prefilling or generating: the second copies from its stream
            await first_token.wait()
        return await run(stub, b)

    first_token = asyncio.Event()

    async def first() -> Run:
        chunks = []
        async for chunk in stub.StreamChat(a):
            first_token.set()
            chunks.append(chunk)
        *tokens, last = chunks
        return Run("", [c.SerializeToString(deterministic=True) for c in tokens], last.prompt_tokens, 0)

    results = await asyncio.gather(first(), second())
    assert [r.tokens for r in results] == [e.tokens for e in expected]
    if stagger:
        assert results[1].cached >= 256


async def test_a_cancelled_prefill_leaves_nothing_wrong_behind(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    partition = salt()
    long = " ".join([SYSTEM] * 4)  # ~1300 tokens: several chunks, seconds of prefill
    request = ask([msg("system", long), msg("user", "Summarise the rules.")], partition)
    computed = service.engine.prompt_tokens_computed
    call = asyncio.create_task(run(stub, request))
    await eventually(lambda: service.engine.prompt_tokens_computed - computed >= 256)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    expected = await cold(stub, request)
    after = await run(stub, request)
    assert after.tokens == expected.tokens
    assert after.cached >= 256  # what was computed before the cancel was kept, and is right


async def test_caches_are_partitioned_by_salt(stub: pb_grpc.LLMServiceStub) -> None:
    request = ask([msg("system", SYSTEM), msg("user", "Any bread without gluten?")], salt())
    await run(stub, request)
    other = pb.LLMChatRequest()
    other.CopyFrom(request)
    other.cache_salt = salt()
    assert (await run(stub, other)).cached == 0
    assert (await run(stub, request)).cached > 0


async def test_the_cache_counters_reach_the_metrics(stub: pb_grpc.LLMServiceStub, service: Service) -> None:
    request = ask([msg("system", SYSTEM), msg("user", "Is rye bread dark?")], salt())
    await run(stub, request)
    await run(stub, request)
    readings = {name: value for name, _, _, value in provider_readings([("llamacpp", service.engine)])}
    assert readings["llmservice_prompt_cache_hits_total"] == service.engine.prompt_cache_hits > 0
    assert readings["llmservice_prompt_cache_misses_total"] > 0
    assert readings["llmservice_prompt_tokens_reused_total"] == service.engine.prompt_tokens_reused > 0
    assert readings["llmservice_prompt_tokens_computed_total"] == service.engine.prompt_tokens_computed > 0
    for name in (
        "llmservice_prompt_cache_evictions_total",
        "llmservice_prompt_cache_host_evictions_total",
        "llmservice_prompt_cache_host_bytes",
        "llmservice_prompt_tokens_warmed_total",
    ):
        assert name in readings
