"""The one error mapping of the gRPC surface: `errors_to_status` on every servicer method,
over the in-process channel (the shim's path, which no server interceptor could cover)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as session_grpc
from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import model_admin_pb2_grpc as admin_grpc
from llmservice.grpc_api.admin_servicer import ModelAdminServicer
from llmservice.grpc_api.in_process import HandlerRegistry, InProcessChannel
from llmservice.grpc_api.servicer import LLMServicer
from llmservice.grpc_api.session_servicer import ChatSessionServicer
from llmservice.grpc_api.status import KIND_KEY, MODEL_NOT_FOUND, PARAM_KEY, RETRY_AFTER_KEY, errors_to_status
from llmservice.kernel import errors

RAISED: dict[str, Exception] = {
    "invalid": errors.InvalidRequest("messages[1].role", "must be one of system, user, assistant, tool"),
    "missing": errors.NotFound("no model 'nope'"),
    "busy": errors.RateLimited("slow down", retry_after_s=2.5),
    "bug": KeyError("a bug"),
}


class Servicer(pb_grpc.LLMServiceServicer):
    def __init__(self) -> None:
        self.stream_closed = asyncio.Event()

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def Chat(self, request: pb.LLMChatRequest, context: Any) -> pb.LLMChatResponse:
        text = request.messages[0].content
        if text == "slow":
            await asyncio.sleep(30)
        if text in RAISED:
            raise RAISED[text]
        return pb.LLMChatResponse(content=text)

    @errors_to_status()
    async def StreamChat(self, request: pb.LLMChatRequest, context: Any) -> AsyncIterator[pb.LLMChatChunk]:
        text = request.messages[0].content
        try:
            yield pb.LLMChatChunk(token="t0")
            yield pb.LLMChatChunk(token="t1")
            if text in RAISED:
                raise RAISED[text]
            while text == "endless":
                await asyncio.sleep(0.01)
                yield pb.LLMChatChunk(token="more")
            yield pb.LLMChatChunk(done=True)
        finally:
            self.stream_closed.set()


@pytest.fixture
def parts() -> tuple[Any, Servicer]:
    registry, servicer = HandlerRegistry(), Servicer()  # type: ignore[abstract]
    pb_grpc.add_LLMServiceServicer_to_server(servicer, cast(grpc.aio.Server, registry))
    return pb_grpc.LLMServiceStub(cast(grpc.aio.Channel, InProcessChannel(registry))), servicer


def chat(text: str) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content=text)])


@pytest.mark.parametrize(
    ("text", "code", "details", "trailers"),
    [
        (
            "invalid",
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[1].role: must be one of system, user, assistant, tool",
            [(PARAM_KEY, "messages[1].role")],
        ),
        ("missing", grpc.StatusCode.NOT_FOUND, "no model 'nope'", [(KIND_KEY, MODEL_NOT_FOUND)]),
        (
            "busy",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            [(RETRY_AFTER_KEY, "2.5"), (KIND_KEY, "rate_limit_exceeded")],
        ),
        ("bug", grpc.StatusCode.INTERNAL, "internal error; see the service log", []),
    ],
)
async def test_a_unary_methods_error_is_its_status_with_its_facts(
    parts: Any, text: str, code: grpc.StatusCode, details: str, trailers: list[tuple[str, str]]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parts[0].Chat(chat(text))
    assert (caught.value.code(), caught.value.details()) == (code, details)
    assert list(caught.value.trailing_metadata()) == trailers


async def test_a_reply_passes_through_untouched(parts: Any) -> None:
    assert (await parts[0].Chat(chat("hi"))).content == "hi"


async def test_a_streams_error_comes_after_the_replies_it_sent(parts: Any) -> None:
    stub, servicer = parts
    call = stub.StreamChat(chat("missing"))
    tokens: list[str] = []

    async def read_all() -> None:
        async for chunk in call:
            tokens.append(chunk.token)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all()
    assert tokens == ["t0", "t1"]
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "no model 'nope'")
    assert list(caught.value.trailing_metadata()) == []  # StreamChat here names no kind of NotFound
    assert servicer.stream_closed.is_set()


async def test_a_caller_that_leaves_a_stream_closes_the_method_at_once(parts: Any) -> None:
    stub, servicer = parts
    call = stub.StreamChat(chat("endless"))
    assert (await call.read()).token == "t0"
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    await asyncio.wait_for(servicer.stream_closed.wait(), 5)


async def test_closing_a_stream_closes_the_methods_generator_at_once(parts: Any) -> None:
    servicer = parts[1]
    stream = servicer.StreamChat(chat("endless"), _Context())
    assert (await anext(stream)).token == "t0"
    await stream.aclose()
    assert servicer.stream_closed.is_set()  # not left for the garbage collector


async def test_cancellation_is_no_error_to_map(parts: Any) -> None:
    servicer = parts[1]
    context = _Context()
    task = asyncio.ensure_future(servicer.Chat(chat("slow"), context))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not context.aborted


def test_decorated_methods_keep_their_kind_for_grpc_aio() -> None:
    """grpc.aio serves a coroutine as a unary reply and an async generator as a stream."""
    assert inspect.iscoroutinefunction(Servicer.Chat)
    assert inspect.isasyncgenfunction(Servicer.StreamChat)


@pytest.mark.parametrize(
    ("servicer", "base"),
    [
        (LLMServicer, pb_grpc.LLMServiceServicer),
        (ChatSessionServicer, session_grpc.ChatSessionServiceServicer),
        (ModelAdminServicer, admin_grpc.ModelAdminServiceServicer),
    ],
)
def test_every_rpc_of_the_service_maps_its_errors(servicer: type, base: type) -> None:
    rpcs = [name for name in vars(base) if not name.startswith("_")]
    assert rpcs
    for name in rpcs:
        assert hasattr(getattr(servicer, name), "__wrapped__"), f"{servicer.__name__}.{name}"


class _Context:
    def __init__(self) -> None:
        self.aborted = False

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = True
        raise RuntimeError("aborted")
