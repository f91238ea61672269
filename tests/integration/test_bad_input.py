"""Bad input gets a clear status that names the field; nothing is silently ignored."""

from __future__ import annotations

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

HI = [pb.ChatMessage(role="user", content="hi")]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

CASES = {
    "no messages and no prompt": (pb.LLMChatRequest(), INVALID, "messages"),
    "unknown role": (
        pb.LLMChatRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]),
        INVALID,
        "messages[0].role",
    ),
    "negative max_tokens": (pb.LLMChatRequest(messages=HI, max_tokens=-5), INVALID, "max_tokens"),
    "temperature above 2": (pb.LLMChatRequest(messages=HI, temperature=2.5), INVALID, "temperature"),
    "temperature below 0": (pb.LLMChatRequest(messages=HI, temperature=-0.1), INVALID, "temperature"),
    "top_p of 0": (pb.LLMChatRequest(messages=HI, top_p=0.0), INVALID, "top_p"),
    "empty stop": (pb.LLMChatRequest(messages=HI, stop=["ok", ""]), INVALID, "stop[1]"),
    "priority out of range": (pb.LLMChatRequest(messages=HI, priority=11), INVALID, "priority"),
    "unknown model": (pb.LLMChatRequest(messages=HI, model="gpt-9"), NOT_FOUND, "'gpt-9'"),
    "unknown provider": (pb.LLMChatRequest(messages=HI, provider="nope"), NOT_FOUND, "'nope'"),
    "image attachment on a text model": (
        pb.LLMChatRequest(
            messages=HI, attachments=[pb.Attachment(mime_type="image/png", data="iVBORw0KGgo=")]
        ),
        INVALID,
        "attachments[0].mime_type",
    ),
    "prompt longer than the context": (
        pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="word " * 5000)]),
        INVALID,
        "messages",
    ),
}


@pytest.mark.parametrize(("request_", "code", "field"), CASES.values(), ids=CASES.keys())
async def test_chat_rejects(
    stub: pb_grpc.LLMServiceStub, request_: pb.LLMChatRequest, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(request_)
    assert caught.value.code() == code
    assert field in caught.value.details()


@pytest.mark.parametrize(("request_", "code", "field"), CASES.values(), ids=CASES.keys())
async def test_stream_chat_rejects_before_any_chunk(
    stub: pb_grpc.LLMServiceStub, request_: pb.LLMChatRequest, code: grpc.StatusCode, field: str
) -> None:
    call = stub.StreamChat(request_)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()  # the first message read is the error, not a chunk
    assert caught.value.code() == code
    assert field in caught.value.details()
