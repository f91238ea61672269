"""A caller's cancel or deadline stops generation at once and frees the engine."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from .conftest import Service, eventually

LONG = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="user", content="Tell a very long story.")], max_tokens=2000
)
SHORT = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Say hello.")], max_tokens=8)
# Tokens that may still be produced between the caller's cancel and the engine seeing it:
# the server learns of the cancel over the network while tokens keep coming (~15 ms each).
SLACK = 60


async def test_cancel_stops_generation_and_the_next_request_runs(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    before = service.tokens_generated
    call = stub.StreamChat(LONG)
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 5:
            break
    call.cancel()

    reply = await stub.Chat(SHORT)  # waits behind the long job unless the cancel freed the engine
    assert reply.completion_tokens > 0
    spent = service.tokens_generated - before
    assert spent <= seen + SLACK + reply.completion_tokens
    assert spent < LONG.max_tokens


async def test_deadline_stops_generation(stub: pb_grpc.LLMServiceStub, service: Service) -> None:
    before = service.tokens_generated
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamChat(LONG, timeout=0.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = await stub.Chat(SHORT)
    assert service.tokens_generated - before < LONG.max_tokens
    assert reply.completion_tokens > 0


async def test_unary_deadline_stops_generation(stub: pb_grpc.LLMServiceStub, service: Service) -> None:
    before = service.tokens_generated
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(LONG, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await stub.Chat(SHORT)
    await asyncio.sleep(0)  # nothing to wait for: the short reply already came after the long job left
    assert service.tokens_generated - before < LONG.max_tokens


async def test_cancel_while_queued_leaves_the_queue_at_once(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    scheduler = service.engine.scheduler
    assert scheduler is not None
    holders = [stub.StreamChat(LONG) for _ in range(scheduler.queue.slots)]
    await eventually(lambda: scheduler.queue.busy == scheduler.queue.slots)  # each holds a place
    queued = stub.StreamChat(LONG)
    await eventually(lambda: bool(scheduler.queue.waiting))
    queued.cancel()
    await eventually(lambda: not scheduler.queue.waiting)
    assert scheduler.queue.stats[0].depth == 0
    for call in holders:
        call.cancel()
    reply = await stub.Chat(SHORT)
    assert reply.completion_tokens > 0
    assert scheduler.queue.busy == 0
