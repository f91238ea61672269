"""Priorities decide who waits: interactive work pauses background work at a token boundary."""

from __future__ import annotations

import asyncio

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from .conftest import Service


def request(prompt: str, *, priority: int, seed: int, max_tokens: int) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)],
        max_tokens=max_tokens,
        temperature=0.9,
        seed=seed,
        priority=priority,
    )


async def test_a_preempted_stream_resumes_with_unchanged_output(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    slots = service.engine.slots
    background = [
        request(f"Write about topic number {i}.", priority=10, seed=i, max_tokens=48) for i in range(slots)
    ]
    alone = [(await stub.Chat(r)).content for r in background]
    started = asyncio.Event()
    progress = [0] * slots
    finished: list[str] = []

    async def run_background(i: int) -> str:
        text = ""
        async for chunk in stub.StreamChat(background[i]):
            text += chunk.token
            progress[i] += 1
            if min(progress) >= 3:
                started.set()
        finished.append(f"background {i}")
        return text

    tasks = [asyncio.create_task(run_background(i)) for i in range(slots)]
    await started.wait()  # every slot is busy with background work
    before = service.engine.preemptions
    urgent = await stub.Chat(request("Say hi.", priority=0, seed=99, max_tokens=6))
    finished.append("interactive")
    texts = await asyncio.gather(*tasks)

    assert urgent.completion_tokens > 0
    assert service.engine.preemptions > before
    assert finished.index("interactive") < len(finished) - 1  # it did not wait for all the background work
    assert texts == alone  # paused and resumed, each background stream says what it says alone


async def test_an_urgent_request_stops_the_background_step_under_way_and_changes_no_output(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    slots = service.engine.slots
    background = [
        request(f"Tell a story about lamp {i}.", priority=10, seed=10 + i, max_tokens=40)
        for i in range(slots)
    ]
    alone = [(await stub.Chat(r)).content for r in background]
    started = asyncio.Event()
    progress = [0] * slots

    async def run_background(i: int) -> str:
        text = ""
        async for chunk in stub.StreamChat(background[i]):
            text += chunk.token
            progress[i] += 1
            if min(progress) >= 2:
                started.set()
        return text

    tasks = [asyncio.create_task(run_background(i)) for i in range(slots)]
    await started.wait()
    before = service.engine.interruptions
    for n in range(3):  # each very likely arrives while a background step decodes
        await stub.Chat(request("Say hi.", priority=0, seed=n, max_tokens=2))
    texts = await asyncio.gather(*tasks)

    assert service.engine.interruptions > before
    assert texts == alone  # a stopped step is decoded again: each stream says what it says alone
