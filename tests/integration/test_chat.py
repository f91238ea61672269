"""Chat and StreamChat semantics on the real bundled model."""

from __future__ import annotations

import logging

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.service.settings import Settings

QUESTION = [pb.ChatMessage(role="user", content="List three colours of the rainbow.")]


async def stream(stub: pb_grpc.LLMServiceStub, request: pb.LLMChatRequest) -> list[pb.LLMChatChunk]:
    return [chunk async for chunk in stub.StreamChat(request)]


def text_of(chunks: list[pb.LLMChatChunk]) -> str:
    return "".join(c.token for c in chunks if not c.done)


async def test_stream_ends_with_one_done_chunk_carrying_usage(stub: pb_grpc.LLMServiceStub) -> None:
    chunks = await stream(stub, pb.LLMChatRequest(messages=QUESTION, max_tokens=12))
    *tokens, last = chunks
    assert last.done
    assert not last.token
    assert not any(c.done for c in tokens)
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert last.prompt_tokens > 5
    assert last.completion_tokens == len(tokens)  # one chunk per token
    assert last.total_tokens == last.prompt_tokens + last.completion_tokens
    assert last.model == "smollm2-135m-instruct-q4_1"
    assert last.provider == "llamacpp"


async def test_max_tokens_ends_with_length(stub: pb_grpc.LLMServiceStub) -> None:
    reply = await stub.Chat(pb.LLMChatRequest(messages=QUESTION, max_tokens=3))
    assert reply.completion_tokens == 3
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH


async def test_a_max_tokens_beyond_the_context_is_capped_at_what_is_left_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A small context of its own and a prompt that takes most of it: little is left to fill.
    config = Settings.model_validate({"server": {"grpc_port": 0}, "llamacpp": {"n_ctx": 256, "n_slots": 1}})
    story = [pb.ChatMessage(role="user", content="Tell a very long story about a lighthouse keeper. " * 18)]
    huge = pb.LLMChatRequest(messages=story, max_tokens=1_000_000_000)
    with caplog.at_level(logging.INFO, logger="llmservice.service.limits.usage"):
        async with (
            running_service(config) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = pb_grpc.LLMServiceStub(channel)
            models = (await stub.ListModels(pb.ListModelsRequest())).models
            n_ctx = next(
                m.context_length for m in models if m.is_default
            )  # the engine's: llama.cpp may round it up
            reply = await stub.Chat(huge)
            last = (await stream(stub, huge))[-1]
            within = await stub.Chat(pb.LLMChatRequest(messages=story, max_tokens=5))
    for end in (reply, last):
        left = n_ctx - end.prompt_tokens
        assert end.max_tokens_capped_to == left
        assert end.finish_reason == pb.FINISH_REASON_LENGTH
        assert 0 < end.completion_tokens <= left
    assert caplog.text.count(f"max_tokens_capped_to={n_ctx - reply.prompt_tokens}") == 2  # the usage log
    assert (within.completion_tokens, within.max_tokens_capped_to) == (5, 0)  # as asked: nothing said


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0}, {"temperature": 0.9, "seed": 1234}, {"temperature": 1.2, "top_p": 0.9, "seed": 7}],
    ids=["greedy", "seeded", "seeded-top-p"],
)
async def test_chat_and_stream_chat_give_the_same_text(
    stub: pb_grpc.LLMServiceStub, sampling: dict[str, float]
) -> None:
    request = pb.LLMChatRequest(messages=QUESTION, max_tokens=24, **sampling)
    unary = await stub.Chat(request)
    chunks = await stream(stub, request)
    assert unary.content == text_of(chunks)
    assert unary.completion_tokens == chunks[-1].completion_tokens
    assert unary.content


async def test_the_same_seed_gives_the_same_text_and_another_seed_differs(
    stub: pb_grpc.LLMServiceStub,
) -> None:
    def ask(seed: int) -> pb.LLMChatRequest:
        return pb.LLMChatRequest(messages=QUESTION, max_tokens=24, temperature=1.5, seed=seed)

    first, again, other = [(await stub.Chat(ask(s))).content for s in (1, 1, 2)]
    assert first == again
    assert first != other


async def test_messages_win_over_system_and_user_prompt(stub: pb_grpc.LLMServiceStub) -> None:
    both = await stub.Chat(
        pb.LLMChatRequest(
            messages=QUESTION, system_prompt="Answer in French.", user_prompt="Name a fish.", max_tokens=16
        )
    )
    messages_only = await stub.Chat(pb.LLMChatRequest(messages=QUESTION, max_tokens=16))
    prompts_only = await stub.Chat(
        pb.LLMChatRequest(system_prompt="Answer in French.", user_prompt="Name a fish.", max_tokens=16)
    )
    assert both.content == messages_only.content
    assert both.prompt_tokens == messages_only.prompt_tokens
    assert prompts_only.prompt_tokens != messages_only.prompt_tokens


async def test_legacy_prompts_are_used_when_messages_are_empty(stub: pb_grpc.LLMServiceStub) -> None:
    legacy = await stub.Chat(
        pb.LLMChatRequest(system_prompt="Be brief.", user_prompt="Name a fish.", max_tokens=8)
    )
    same = await stub.Chat(
        pb.LLMChatRequest(
            messages=[
                pb.ChatMessage(role="system", content="Be brief."),
                pb.ChatMessage(role="user", content="Name a fish."),
            ],
            max_tokens=8,
        )
    )
    assert legacy.content == same.content
    assert legacy.prompt_tokens == same.prompt_tokens


async def test_stop_sequence_cuts_the_text_before_it(stub: pb_grpc.LLMServiceStub) -> None:
    free = await stub.Chat(pb.LLMChatRequest(messages=QUESTION, max_tokens=30))
    assert len(free.content) > 6
    stop = free.content[3:6]  # a piece of what the model will say
    request = pb.LLMChatRequest(messages=QUESTION, max_tokens=30, stop=[stop])
    cut = await stub.Chat(request)
    assert cut.finish_reason == pb.FINISH_REASON_STOP
    assert cut.content == free.content[: free.content.index(stop)]
    assert text_of(await stream(stub, request)) == cut.content


async def test_text_attachment_is_read(stub: pb_grpc.LLMServiceStub) -> None:
    plain = await stub.Chat(pb.LLMChatRequest(messages=QUESTION, max_tokens=4))
    with_note = await stub.Chat(
        pb.LLMChatRequest(
            messages=QUESTION,
            max_tokens=4,
            attachments=[
                pb.Attachment(mime_type="text/plain", data="Violet is a colour too.", filename="note.txt")
            ],
        )
    )
    assert with_note.prompt_tokens > plain.prompt_tokens


async def test_list_models_reports_the_loaded_default(stub: pb_grpc.LLMServiceStub) -> None:
    models = (await stub.ListModels(pb.ListModelsRequest())).models
    assert [(m.id, m.provider, m.is_default, m.loaded) for m in models] == [
        ("smollm2-135m-instruct-q4_1", "llamacpp", True, True)
    ]
    assert models[0].context_length == 4096
    assert models[0].capabilities.streaming
