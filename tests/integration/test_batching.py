"""Continuous batching: many callers at once, each getting what it would get alone."""

from __future__ import annotations

import asyncio

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from .conftest import Service

PROMPTS = [
    "Name three fruits.",
    "Write a line about rain.",
    "What is two plus two?",
    "Describe a cat in five words.",
    "List some colours.",
    "Say something about the moon.",
    "Give me a word that rhymes with tree.",
    "Tell a very short joke.",
]


def ask(prompt: str, seed: int, max_tokens: int = 24) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)],
        max_tokens=max_tokens,
        temperature=0.9,
        seed=seed,
    )


async def test_the_same_seed_gives_the_same_output_alone_and_batched(stub: pb_grpc.LLMServiceStub) -> None:
    alone = (await stub.Chat(ask(PROMPTS[0], seed=5))).content
    together = await asyncio.gather(*(stub.Chat(ask(p, seed=5 + i)) for i, p in enumerate(PROMPTS[:4])))
    assert together[0].content == alone


async def test_eight_concurrent_streams_each_get_their_own_answer(
    stub: pb_grpc.LLMServiceStub, service: Service
) -> None:
    requests = [ask(p, seed=i, max_tokens=16) for i, p in enumerate(PROMPTS)]
    alone = [(await stub.Chat(r)).content for r in requests]

    async def stream(request: pb.LLMChatRequest) -> tuple[str, pb.LLMChatChunk]:
        chunks = [c async for c in stub.StreamChat(request)]
        return "".join(c.token for c in chunks[:-1]), chunks[-1]

    results = await asyncio.gather(*(stream(r) for r in requests))
    assert [text for text, _ in results] == alone
    for (_, last), request in zip(results, requests, strict=True):
        assert last.done
        assert last.completion_tokens <= request.max_tokens
    assert service.engine.slots < len(PROMPTS)  # some of them waited for a slot, and still matched
